"""A finished or running search, read back from its ledger: ``autoqra.load_run(path_or_url)``.

Everything here is read from the Optuna study (a run directory's ``trials.db``, or any storage URL)
and the run's settings, which the search keeps both in ``settings.json`` and with the study. Nothing
is recomputed by training: the tables are the recorded trials, and the chosen plan, the front and
the report are derived from them exactly as the search derives them (:func:`autoqra.search.pipeline.summarize`).
pandas is imported on use, so ``import autoqra`` stays light.

    >>> run = load_run("runs/autoqra-20261201-120000")
    >>> run.trials[["number", "fidelity", "objective", "avg_bits", "avg_rank", "budget_fraction"]]
    >>> run.chosen.plan, run.front, run.layers()
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoqra.domain import Plan, PlanError, TrialStatus
from autoqra.errors import AutoQRAError
from autoqra.priors.schema import Priors
from autoqra.search.codec import SearchCodec
from autoqra.search.pipeline import RunOutcome, summarize
from autoqra.search.stage import Archive, Ask, Evaluated
from autoqra.space.formats import DTYPE_BYTES, weight_storage_bytes
from autoqra.space.model_spec import LinearSpec, ModelSpec, model_spec
from autoqra.space.search_space import SearchSpace, parse_space
from autoqra.store.ledger import STUDY_NAME, LedgerEntry, open_study, run_info, sqlite_url, study_entries

if TYPE_CHECKING:
    import pandas as pd

#: columns of :attr:`Run.trials`, in order (described in the README, "Looking at results")
TRIAL_COLUMNS = (
    "number", "stage", "fidelity", "status", "objective", "metric_name", "metric", "eval_loss", "accuracy",
    "avg_bits", "stored_bits", "avg_rank", "predicted_peak_bytes", "budget_fraction", "within_budget",
    "measured_peak_bytes", "wall_s", "seed", "plan_hash", "error",
)


class RunError(AutoQRAError):
    """A path or URL that is no autoqra run, or a run with nothing to show yet."""


@dataclass(frozen=True)
class Chosen:
    """The run's chosen plan, its row of :attr:`Run.trials` and the fidelity that chose it."""

    plan: Plan
    row: pd.Series
    by: str


@dataclass(frozen=True)
class Run:
    """One search run as recorded. ``trials`` holds one row per recorded trial (``TRIAL_COLUMNS``)."""

    source: str
    run_dir: Path | None
    settings: dict[str, Any]
    priors: Priors | None
    budget_bytes: int
    trials: pd.DataFrame
    plans: dict[str, Plan]
    outcome: RunOutcome
    codec: SearchCodec
    numbers: dict[int, int] = field(repr=False)  # id(Evaluated) -> trial number

    @property
    def space(self) -> SearchSpace:
        return self.codec.space

    @property
    def finished(self) -> bool:
        """Whether the search ended and wrote its summary (else: still running, or killed)."""
        return self.outcome.stopped_by != RUNNING

    def rows(self, evaluated: list[Evaluated]) -> pd.DataFrame:
        """The rows of :attr:`trials` for these archive entries, in their order."""
        numbers = [self.numbers[id(e)] for e in evaluated]
        return self.trials.set_index("number", drop=False).loc[numbers].reset_index(drop=True)

    @property
    def front(self) -> pd.DataFrame:
        """The ``high`` Pareto front within the budget (quality up, predicted peak down), by peak."""
        return self.rows(self.outcome.front).sort_values("predicted_peak_bytes").reset_index(drop=True)

    @property
    def chosen(self) -> Chosen | None:
        e = self.outcome.chosen
        if e is None:
            return None
        return Chosen(plan=e.ask.plan, row=self.rows([e]).iloc[0], by=self.outcome.chosen_by)

    def plan(self, pick: str | int | None = None) -> Plan:
        """``None``/``"chosen"``: the chosen plan; an int: that trial's plan; a string: the plan whose
        hash starts with it. RunError if nothing (or more than one plan) matches."""
        if pick is None or pick == "chosen":
            chosen = self.chosen
            if chosen is None:
                raise RunError(f"run {self.source} has no chosen plan (no ok high or final trial within the budget)")
            return chosen.plan
        if isinstance(pick, int) or (isinstance(pick, str) and pick.isdigit()):
            rows = self.trials[self.trials["number"] == int(pick)]
            if rows.empty:
                raise RunError(f"run {self.source} has no trial {pick} (trials 0..{len(self.trials) - 1})")
            return self.plans[str(rows.iloc[0]["plan_hash"])]
        matches = [h for h in self.plans if h.startswith(pick)] if pick else []
        if len(matches) != 1:
            found = "no plan" if not matches else f"{len(matches)} plans"
            raise RunError(f"--pick {pick!r}: {found} of run {self.source} has a hash starting so "
                           "(use chosen, a trial number or a longer hash prefix)")
        return self.plans[matches[0]]

    def layers(self, plan_hash: str | None = None) -> pd.DataFrame:
        """Per group of the chosen plan (or the plan with that hash prefix): format, nominal and stored
        bits, rank, parameters, and the sensitivity and demand priors where the run measured them."""
        import pandas as pd

        plan = self.plan(plan_hash)
        priors = {g.name: g for g in self.priors.groups} if self.priors is not None else {}
        rows = []
        for group in plan.groups:
            numel = sum(self.codec.spec.linear(m).numel for m in group.modules)
            prior = priors.get(group.name)
            rows.append({
                "group": group.name, "modules": len(group.modules), "format": group.format.label,
                "bits": group.format.bits, "stored_bits": _stored_bits(self.codec, [group.format] * len(group.modules),
                                                                        list(group.modules)),
                "rank": group.rank, "params": numel,
                "sensitivity": prior.sensitivity if prior else math.nan, "demand": prior.demand if prior else math.nan,
            })
        return pd.DataFrame(rows)

    def report_lines(self) -> list[str]:
        """The report ``autoqra search`` prints at its end, from the ledger (for a running run: so far)."""
        from autoqra.report.run_files import report_lines

        lines = report_lines(self.outcome, self.budget_bytes)
        if self.outcome.stopped_by == RUNNING:
            lines[0] = lines[0].replace(f"search ended ({RUNNING})", "search still running or stopped before its end "
                                        "(no summary recorded)")
        return lines


RUNNING = "running"


def storage_of(source: str | Path) -> tuple[str, Path | None]:
    """(storage URL, run directory or None) of a run directory or a storage URL; RunError for a path
    that is no run directory."""
    text = str(source)
    if "://" in text:
        return text, None
    run_dir = Path(text).expanduser()
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a directory (give a run directory or a storage URL)")
    if not (run_dir / "trials.db").is_file():
        elsewhere = _settings_storage(run_dir)
        if elsewhere is not None:
            return elsewhere, run_dir
        raise RunError(f"{run_dir} is not an autoqra run directory: it has no trials.db")
    return sqlite_url(run_dir), run_dir


def _settings_value(run_dir: Path | None, key: str) -> str | None:
    """A string of a run directory's settings.json (``storage``, ``study``: the search's options)."""
    path = run_dir / "settings.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def _settings_storage(run_dir: Path) -> str | None:
    """The --storage URL of a run directory whose trials live in a database (None: no such URL)."""
    stored = _settings_value(run_dir, "storage")
    if stored is not None and "***" in stored:
        raise RunError(f"{run_dir} keeps its trials at {stored} (the password is not written down); give the "
                       "URL instead of the run directory, with --study")
    return stored


def load_run(source: str | Path, study: str | None = None) -> Run:
    """Read a run: a run directory (``settings.json`` + ``trials.db``) or a storage URL (with ``study``,
    default ``autoqra``). RunError (one line) for anything that is not an autoqra run."""
    import pandas as pd

    text = str(source)
    url, run_dir = storage_of(source)
    handle = open_study(url, study or _settings_value(run_dir, "study") or STUDY_NAME)
    info = run_info(handle)

    def recorded(key: str) -> Any:
        """A run-level value kept with the study, else its file (runs recorded before it moved in)."""
        if key in info:
            return info[key]
        path = run_dir / f"{key}.json" if run_dir is not None else None
        return json.loads(path.read_text()) if path is not None and path.is_file() else None

    settings, summary, priors_data = recorded("settings"), recorded("summary"), recorded("priors")
    if not isinstance(settings, dict):
        raise RunError(f"{text}: the study has no autoqra run settings; not an autoqra search run")
    space = parse_space(json.dumps(settings["space"]), source=f"{text} settings")
    codec = SearchCodec(model_spec(space.model), space)
    entries = study_entries(handle, url)
    if not entries:
        raise RunError(f"run {text} has no recorded trial yet")
    budget = int(settings["budget"]["bytes"])
    archive = Archive()
    numbers: dict[int, int] = {}
    plans: dict[str, Plan] = {}
    for entry in entries:
        evaluated = _evaluated(codec, entry)
        archive.add(evaluated)
        numbers[id(evaluated)] = entry.number
        plans.setdefault(entry.result.plan.plan_hash, entry.result.plan)
    costs: dict[str, float] = settings["fidelity_costs"]
    spent = sum(costs.get(e.fidelity, 0.0) for e in entries)
    if summary is not None:
        reference = summary.get("hypervolume_reference")
        outcome = summarize(archive, budget, spent=float(summary.get("cost_spent_high_units", spent)),
                            elapsed_s=float(summary["elapsed_s"]), stopped_by=str(summary["stopped_by"]),
                            hv_history=list(summary.get("hypervolume_per_generation") or []),
                            hv_reference=tuple(reference) if reference else None)
    else:
        elapsed = sum(sum(e.result.phases.model_dump().values()) for e in entries)
        outcome = summarize(archive, budget, spent=spent, elapsed_s=elapsed, stopped_by=RUNNING)
    table = pd.DataFrame([_row(codec, entry, budget) for entry in entries], columns=list(TRIAL_COLUMNS))
    priors = Priors.from_json(json.dumps(priors_data), f"{text} priors") if priors_data is not None else None
    return Run(source=text, run_dir=run_dir, settings=settings, priors=priors, budget_bytes=budget, trials=table,
               plans=plans, outcome=outcome, codec=codec, numbers=numbers)


def _evaluated(codec: SearchCodec, entry: LedgerEntry) -> Evaluated:
    plan = entry.result.plan
    try:
        genome = codec.encode(plan)
    except PlanError:
        genome = None  # a reference plan outside the space (the uniform baseline's QLoRA)
    return Evaluated(ask=Ask(plan=plan, fidelity=entry.fidelity, genome=genome), result=entry.result,
                     predicted_peak_bytes=entry.predicted_peak_bytes, stage=entry.stage)


@cache
def _linears(spec: ModelSpec) -> dict[str, LinearSpec]:
    return {linear.name: linear for linear in spec.linears}


def _stored_bits(codec: SearchCodec, formats: list[Any], modules: list[str]) -> float:
    """Stored bits per weight (codes, scales, zeros, constants) over ``modules``, as the backends store them."""
    compute = DTYPE_BYTES[codec.space.training.compute_dtype]
    linears = _linears(codec.spec)
    stored = numel = 0
    for fmt, name in zip(formats, modules, strict=True):
        linear = linears[name]
        stored += weight_storage_bytes(fmt, linear.out_features, linear.in_features, compute)
        numel += linear.numel
    return 8 * stored / numel


def _row(codec: SearchCodec, entry: LedgerEntry, budget: int) -> dict[str, Any]:
    r, plan = entry.result, entry.result.plan
    modules = [(g.format, g.rank, m) for g in plan.groups for m in g.modules]
    objective = r.objective if r.status is TrialStatus.OK else None
    metric = r.metrics.eval_loss if r.metric_name == "eval_loss" else r.metrics.accuracy
    return {
        "number": entry.number, "stage": entry.stage, "fidelity": entry.fidelity, "status": r.status.value,
        "objective": math.nan if objective is None else float(objective), "metric_name": r.metric_name,
        "metric": math.nan if metric is None else float(metric),
        "eval_loss": math.nan if r.metrics.eval_loss is None else float(r.metrics.eval_loss),
        "accuracy": math.nan if r.metrics.accuracy is None else float(r.metrics.accuracy),
        "avg_bits": sum(f.bits for f, _, _ in modules) / len(modules),
        "stored_bits": _stored_bits(codec, [f for f, _, _ in modules], [m for _, _, m in modules]),
        "avg_rank": sum(rank for _, rank, _ in modules) / len(modules),
        "predicted_peak_bytes": entry.predicted_peak_bytes, "budget_fraction": entry.predicted_peak_bytes / budget,
        "within_budget": entry.predicted_peak_bytes <= budget,
        "measured_peak_bytes": r.measured_peak_bytes, "wall_s": sum(r.phases.model_dump().values()),
        "seed": r.seed, "plan_hash": plan.plan_hash, "error": r.error,
    }

