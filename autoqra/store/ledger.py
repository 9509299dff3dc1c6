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

from autoqra.domain import Plan, TrialResult, TrialStatus
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


def sqlite_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'trials.db').resolve()}"


class Ledger:
    def __init__(self, storage_url: str, jsonl_path: Path | None, format_labels: tuple[str, ...],
                 ranks: tuple[int, ...], study_name: str = STUDY_NAME) -> None:
        import optuna
        from optuna.distributions import CategoricalDistribution

        try:
            self.study = optuna.create_study(storage=storage_url, study_name=study_name,
                                             directions=["maximize", "minimize"], load_if_exists=True)
        except Exception as exc:  # SQLAlchemy/Optuna raise many types for a bad URL or unreadable file
            raise StoreError(f"cannot open the trial store {storage_url}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        self._count = len(self.study.get_trials(deepcopy=False))  # trials recorded so far (one read at open)
        if self._count == 0:  # a new study; an existing one (an older run directory) is only read
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # set_metric_names is marked experimental
                self.study.set_metric_names(METRIC_NAMES)
        self.storage_url = storage_url
        self.jsonl_path = jsonl_path
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

    def record(self, result: TrialResult, *, predicted_peak_bytes: int, stage: str, fidelity: str,
               brief: str | None = None) -> int:
        """Write one result (Optuna first, then the JSONL line); returns the Optuna trial number.
        ``brief`` is a one-line plan summary a person reads in optuna-dashboard."""
        import optuna
        from optuna.trial import TrialState

        params, dists = self._params(result.plan)
        ok = result.status is TrialStatus.OK and result.objective is not None
        attrs = {
            "fidelity": fidelity, "status": result.status.value, "stage": stage, "plan_hash": result.plan.plan_hash,
            "plan": brief or result.plan.plan_hash,
            "predicted_peak_bytes": predicted_peak_bytes, "trial_predicted_peak_bytes": result.predicted_peak_bytes,
            "measured_peak_bytes": result.measured_peak_bytes, "measured_static_bytes": result.measured_static_bytes,
            "peak_rss_bytes": result.peak_rss_bytes, "metric_name": result.metric_name,
            "eval_loss": result.metrics.eval_loss, "accuracy": result.metrics.accuracy, "seed": result.seed,
            "seconds": result.phases.model_dump(), "device": result.device, "error": result.error,
            "result": result.model_dump(mode="json"),
        }
        trial = optuna.trial.create_trial(
            params=params, distributions=dists, user_attrs=attrs,
            values=[float(result.objective), float(predicted_peak_bytes)] if ok else None,
            state=TrialState.COMPLETE if ok else TrialState.FAIL,
        )
        self.study.add_trial(trial)
        number = self._count
        self._count += 1
        if self.jsonl_path is not None:
            line = {"number": number, "stage": stage, "fidelity": fidelity, "predicted_peak_bytes": predicted_peak_bytes,
                    "result": result.model_dump(mode="json")}
            with self.jsonl_path.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
        return number

    def set_run_info(self, key: str, value: Any) -> None:
        """Keep a run-level JSON value (``settings``, ``priors``, ``summary``) with the study, so a run
        can be read back from its storage URL alone (``autoqra report URL``)."""
        self.study.set_user_attr(f"{RUN_INFO_PREFIX}{key}", value)

    def entries(self) -> list[LedgerEntry]:
        """Every recorded trial, in recording order, as recorded (results and their predicted peaks)."""
        return study_entries(self.study, self.storage_url)


RUN_INFO_PREFIX = "autoqra."


def open_study(storage_url: str, study_name: str = STUDY_NAME) -> Any:
    """An existing study, for reading; StoreError (one line) when there is none. Never creates a store:
    a SQLite URL must name an existing file."""
    import optuna

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
                               fidelity=str(attrs["fidelity"]), number=t.number))
    return out
