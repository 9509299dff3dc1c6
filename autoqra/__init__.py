"""autoqra: per-layer quantization bit-width and LoRA rank search under a peak-training-memory budget.

The library entry points, imported lazily so that ``import autoqra`` stays light::

    from autoqra import SearchRequest, run_search
    outcome = run_search(SearchRequest(budget="qlora", preset="quick"))
    print(outcome.run_dir, outcome.chosen_plan)

    run = load_run(outcome.run_dir)        # any run directory or storage URL, finished or running
    run.trials, run.front, run.chosen.plan, run.layers()   # pandas tables
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "SearchRequest": "autoqra.service.requests",
    "TrialRequest": "autoqra.service.requests",
    "PriorsRequest": "autoqra.service.requests",
    "PlanChoice": "autoqra.service.requests",
    "run_search": "autoqra.service.search",
    "prepare_search": "autoqra.service.search",
    "SearchOutcome": "autoqra.service.search",
    "run_trial": "autoqra.service.trial",
    "run_priors": "autoqra.service.priors",
    "Plan": "autoqra.domain",
    "load_run": "autoqra.report.run",
    "load_quantized": "autoqra.trials.loading",
    "TrainRequest": "autoqra.service.requests",
    "run_train": "autoqra.service.train",
    "Run": "autoqra.report.run",
}
__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from autoqra.domain import Plan
    from autoqra.report.run import Run, load_run
    from autoqra.service.priors import run_priors
    from autoqra.service.requests import PlanChoice, PriorsRequest, SearchRequest, TrainRequest, TrialRequest
    from autoqra.service.search import SearchOutcome, prepare_search, run_search
    from autoqra.service.train import run_train
    from autoqra.service.trial import run_trial
    from autoqra.trials.loading import load_quantized


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autoqra' has no attribute {name!r}")
