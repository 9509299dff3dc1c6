"""An Optuna study (SQLite in the run directory by default, any SQLAlchemy URL) plus a JSONL log.

Each finished trial becomes one Optuna trial of a two-objective study (quality to maximise, the
plan's *predicted* peak training bytes at the budget's setup to minimise; metric names ``quality``
and ``predicted_peak_bytes``). The plan is stored as categorical parameters, ``<group>.format`` and
``<group>.rank``; fidelity, status, stage, timings, seeds, predicted and measured memory, and the
whole ``TrialResult`` JSON are user attributes, so Optuna tools can open a run and
:meth:`Ledger.entries` replays every recorded result. Failed trials (diverged, out of memory) are
stored as ``FAIL`` with their error text. Run directories written before the rename of ``peak_bytes``
to ``predicted_peak_bytes`` are still read.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoqra.domain import Plan, TrialResult, TrialStatus, derive_seed
from autoqra.errors import AutoQRAError

STUDY_NAME = "autoqra"
METRIC_NAMES = ["quality", "predicted_peak_bytes"]


class StoreError(AutoQRAError):
    """A storage URL or run directory that cannot be used."""


@dataclass(frozen=True)
class LedgerEntry:
    result: TrialResult
    predicted_peak_bytes: int
    stage: str
    fidelity: str
    number: int = -1  # the Optuna trial number (-1: not read from a study)
    run_id: str = ""  # the run that recorded it ("" before run ids existed)


def normalize_url(url: str) -> str:
    """``url`` checked as a database URL; ``postgresql://`` gets the pinned psycopg driver."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"--storage {url!r} is not a database URL (e.g. postgresql://user@host:5432/db or "
                         "sqlite:///path/trials.db)") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def sqlite_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'trials.db').resolve()}"


def rdb_storage(url: str) -> Any:
    """Optuna's RDB storage of ``url``. Two searches that start at once on a new database both create
    Optuna's schema, and the loser's CREATE fails on the winner's tables; it retries and then finds them."""
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError, OperationalError):
            if attempt == 4 or url.startswith("sqlite"):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


class Ledger:
    def __init__(self, storage_url: str, jsonl_path: Path | None, format_labels: tuple[str, ...],
                 ranks: tuple[int, ...], study_name: str = STUDY_NAME, run_id: str = "") -> None:
        import optuna
        from optuna.distributions import CategoricalDistribution

        try:
            self.study = optuna.create_study(storage=rdb_storage(storage_url), study_name=study_name,
                                             directions=["maximize", "minimize"], load_if_exists=True)
        except Exception as exc:  # SQLAlchemy/Optuna raise many types for a bad URL or unreadable file
            raise StoreError(f"cannot open the trial store {storage_url}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        if not self.study.get_trials(deepcopy=False):  # a new study; an existing one keeps its metric names
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # set_metric_names is marked experimental
                self.study.set_metric_names(METRIC_NAMES)
        self.storage_url = storage_url
        self.jsonl_path = jsonl_path
        self.run_id = run_id  # marks this run's trials in a study several runs may write
        self._format = CategoricalDistribution(list(format_labels))
        self._rank = CategoricalDistribution(list(ranks))
        self._labels = set(format_labels)
        self._ranks = set(ranks)

    def _params(self, plan: Plan) -> tuple[dict[str, Any], dict[str, Any]]:
        params: dict[str, Any] = {}
        dists: dict[str, Any] = {}
        for group in plan.groups:
            label = group.format.label
            if label not in self._labels or group.rank not in self._ranks:
                raise StoreError(f"plan group {group.name}: {label} r={group.rank} is not among the store's choices")
            params[f"{group.name}.format"], dists[f"{group.name}.format"] = label, self._format
            params[f"{group.name}.rank"], dists[f"{group.name}.rank"] = group.rank, self._rank
        return params, dists

    def start(self, plan: Plan, *, stage: str, fidelity: str, predicted_peak_bytes: int,
              brief: str | None = None) -> int:
        """Record a trial as RUNNING when it is submitted (a dead process leaves it so; a resume marks
        it failed and runs it again); returns its storage id for :meth:`finish`."""
        import optuna
        from optuna.trial import TrialState

        params, dists = self._params(plan)
        attrs = {"fidelity": fidelity, "stage": stage, "plan_hash": plan.plan_hash, "plan": brief or plan.plan_hash,
                 "predicted_peak_bytes": predicted_peak_bytes, "run_id": self.run_id}
        trial = optuna.trial.create_trial(params=params, distributions=dists, user_attrs=attrs, state=TrialState.RUNNING)
        return int(self.study._storage.create_new_trial(self.study._study_id, template_trial=trial))

    def finish(self, trial_id: int, result: TrialResult, *, predicted_peak_bytes: int, stage: str,
               fidelity: str) -> int:
        """Complete a started trial with its result (Optuna first, then the JSONL line); returns the
        Optuna trial number."""
        from optuna.trial import TrialState

        storage = self.study._storage
        objective = result.objective if result.status is TrialStatus.OK else None
        ok = objective is not None
        attrs = {
            "status": result.status.value, "trial_predicted_peak_bytes": result.predicted_peak_bytes,
            "measured_peak_bytes": result.measured_peak_bytes, "measured_static_bytes": result.measured_static_bytes,
            "peak_rss_bytes": result.peak_rss_bytes, "metric_name": result.metric_name,
            "eval_loss": result.metrics.eval_loss, "accuracy": result.metrics.accuracy, "seed": result.seed,
            "seconds": result.phases.model_dump(), "device": result.device, "error": result.error,
            "result": result.model_dump(mode="json"),
        }
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE if ok else TrialState.FAIL,
                                       values=[objective, float(predicted_peak_bytes)] if objective is not None else None)
        number = int(storage.get_trial_number_from_id(trial_id))
        if self.jsonl_path is not None:
            line = {"number": number, "stage": stage, "fidelity": fidelity, "predicted_peak_bytes": predicted_peak_bytes,
                    "result": result.model_dump(mode="json")}
            with self.jsonl_path.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
        return number

    def record(self, result: TrialResult, *, predicted_peak_bytes: int, stage: str, fidelity: str,
               brief: str | None = None) -> int:
        """Write one finished result at once (:meth:`start` then :meth:`finish`); returns the trial number.
        ``brief`` is a one-line plan summary a person reads in optuna-dashboard."""
        trial_id = self.start(result.plan, stage=stage, fidelity=fidelity, predicted_peak_bytes=predicted_peak_bytes,
                              brief=brief)
        return self.finish(trial_id, result, predicted_peak_bytes=predicted_peak_bytes, stage=stage, fidelity=fidelity)

    def fail_running(self, reason: str) -> int:
        """Mark this run's trials left RUNNING (by a process that died) as failed; returns how many.
        Trials of other runs writing the same study are left alone."""
        from optuna.trial import TrialState

        storage = self.study._storage
        count = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("run_id") == self.run_id:
                storage.set_trial_user_attr(t._trial_id, "error", reason)
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                count += 1
        return count

    def set_run_info(self, key: str, value: Any) -> None:
        """Keep a run-level JSON value (``settings``, ``priors``, ``summary``) with the study, so a run
        can be read back from its storage URL alone (``autoqra report URL``)."""
        self.study.set_user_attr(f"{RUN_INFO_PREFIX}{key}", value)

    def entries(self) -> list[LedgerEntry]:
        """Every recorded trial, in recording order, as recorded (results and their predicted peaks)."""
        return study_entries(self.study, self.storage_url)


RUN_INFO_PREFIX = "autoqra."


class Replay:
    """Results recorded before a crash, handed back when the resumed search asks the same trial
    (same plan, fidelity and derived seed), each at most once, so no finished trial runs again."""

    def __init__(self, entries: list[LedgerEntry]) -> None:
        from collections import defaultdict, deque

        self._results: dict[tuple[str, str, int], deque[TrialResult]] = defaultdict(deque)
        for e in entries:
            self._results[(e.result.plan.plan_hash, e.fidelity, e.result.seed)].append(e.result)
        self.total = len(entries)

    def take(self, plan_hash: str, fidelity: str, seed: int) -> TrialResult | None:
        queue = self._results.get((plan_hash, fidelity, seed))
        return queue.popleft() if queue else None

    @property
    def left(self) -> int:
        """Recorded results no stage asked for again (a pool's completion order may differ)."""
        return sum(len(q) for q in self._results.values())

    def at_other_seeds(self, run_seed: int) -> int:
        """Recorded results whose seed is not the one ``derive_seed`` gives their fidelity now: trials
        recorded before trial seeds became common to all plans (2026-12-03) were seeded per plan, so
        no stage can ask them again and they will be rerun."""
        return sum(len(q) for (_, fidelity, seed), q in self._results.items()
                   if seed != derive_seed(run_seed, fidelity))


def open_study(storage_url: str, study_name: str = STUDY_NAME) -> Any:
    """An existing study, for reading; StoreError (one line) when there is none. Never creates a store:
    a SQLite URL must name an existing file."""
    import optuna

    storage_url = normalize_url(storage_url)
    if storage_url.startswith("sqlite:///"):
        path = Path(storage_url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise StoreError(f"no trial store at {path}")
    try:
        return optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:
        raise StoreError(f"{storage_url} holds no study named {study_name!r}") from None
    except Exception as exc:  # SQLAlchemy/Optuna raise many types for a bad URL or unreadable file
        raise StoreError(f"cannot open the trial store {storage_url}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def run_info(study: Any) -> dict[str, Any]:
    """The run-level values :meth:`Ledger.set_run_info` kept with the study."""
    return {k.removeprefix(RUN_INFO_PREFIX): v for k, v in study.user_attrs.items() if k.startswith(RUN_INFO_PREFIX)}


def study_entries(study: Any, storage_url: str) -> list[LedgerEntry]:
    """Every autoqra trial of ``study`` in recording order; StoreError for a study of another kind."""
    out = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if "result" not in attrs:
            continue
        peak = attrs.get("predicted_peak_bytes", attrs.get("peak_bytes"))  # the name before the rename
        if peak is None:
            raise StoreError(f"trial {t.number} of {storage_url} has no predicted peak; not an autoqra study")
        try:
            result = TrialResult.model_validate_json(json.dumps(attrs["result"]))
        except ValueError as exc:
            raise StoreError(f"trial {t.number} of {storage_url} is not an autoqra trial result: "
                             f"{str(exc).splitlines()[0]}") from None
        out.append(LedgerEntry(result=result, predicted_peak_bytes=int(peak), stage=str(attrs["stage"]),
                               fidelity=str(attrs["fidelity"]), number=t.number, run_id=str(attrs.get("run_id", ""))))
    return out
