"""Synthetic searches through any executor, for the executor tests and the benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoqra.executors.factories import SyntheticEvaluatorFactory
from autoqra.search.pipeline import RunConfig, RunOutcome, SearchPipeline
from autoqra.search.settings import preset
from autoqra.search.synthetic import tiny_problem
from autoqra.store.ledger import Ledger, sqlite_url


def synthetic_search(runner: Any, factory: SyntheticEvaluatorFactory, out: Path | None = None, *,
                     max_cost: float = 8.0, strategy: str = "autoqra", seed: int = 0,
                     storage: str | None = None, study: str = "autoqra", run_id: str = "",
                     preset_name: str = "quick") -> tuple[RunOutcome, Ledger | None]:
    """The synthetic problem of ``factory`` searched through ``runner``; the ledger when ``out`` or
    ``storage`` is given."""
    p = tiny_problem(factory.blocks, factory.budget_position, factory.seed)
    fidelities = dict(p.codec.space.fidelities)
    ledger = None
    if out is not None or storage is not None:
        ledger = Ledger(storage or sqlite_url(out), None, tuple(f.label for f in p.codec.formats), p.codec.ranks,
                        study_name=study, run_id=run_id)
    chosen = preset(preset_name).with_final_top(0).with_max_cost(max_cost)
    pipeline = SearchPipeline(codec=p.codec, utility=p.utility, runner=runner, fidelities=fidelities, ledger=ledger,
                              config=RunConfig(strategy=strategy, preset=chosen, budget_bytes=p.budget_bytes, seed=seed))
    return pipeline.run(), ledger


def trial_keys(outcome: RunOutcome) -> dict[tuple[str, str, int], float | None]:
    """(plan hash, fidelity, seed) -> objective of every trial of a run."""
    return {(e.ask.plan.plan_hash, e.ask.fidelity, e.result.seed): e.result.objective for e in outcome.archive.items}
