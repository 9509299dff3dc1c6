"""Picklable evaluator factories: what a worker process or a Ray task builds its evaluator from."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoqra.domain import Fidelity, Plan, TrialResult

if TYPE_CHECKING:
    from autoqra.search.runner import PlanEvaluator
    from autoqra.trials.evaluator import EvaluatorConfig


@dataclass(frozen=True)
class TrialEvaluatorFactory:
    """Real trials: an :class:`~autoqra.trials.evaluator.Evaluator` of ``config``."""

    config: EvaluatorConfig

    @property
    def task(self) -> str:
        return self.config.task

    def build(self) -> PlanEvaluator:
        from autoqra.trials.evaluator import Evaluator

        return Evaluator(self.config)


# Mean wall seconds of real trials of the default space on the 2-core CPU, from the trial ledger of
# experiments/results/compare/runs/autoqra.news.qlora.s0 (low 10.0, high 25.5, final 157; spread 8%).
REAL_SECONDS = {"low": 10.0, "high": 25.5, "final": 157.0}
SPREAD = 0.08


@dataclass(frozen=True)
class SyntheticEvaluatorFactory:
    """The synthetic problem of :func:`autoqra.search.synthetic.tiny_problem`, for tests and benchmarks.

    ``time_scale`` > 0 makes each trial take ``time_scale`` x the real trial time of its fidelity
    (log-normal spread, drawn from the trial seed), so executors are measured on durations shaped
    like real ones without training anything."""

    blocks: int = 8
    budget_position: float = 0.45
    seed: int = 123
    time_scale: float = 0.0
    announce_dir: str | None = None  # tests: each trial writes <pid>.<trial_tag>.running here when it starts

    @property
    def task(self) -> str:
        return "synthetic"

    def build(self) -> PlanEvaluator:
        from autoqra.search.synthetic import tiny_problem

        evaluator = tiny_problem(self.blocks, self.budget_position, self.seed).evaluator
        if self.time_scale > 0 or self.announce_dir:
            return PacedEvaluator(evaluator, self.time_scale, self.announce_dir)
        return evaluator


def trial_tag(plan_hash: str, fidelity: str) -> str:
    """A trial's name within a run (every plan of a fidelity shares the trial seed): plan hash prefix and fidelity."""
    return f"{plan_hash[:16]}-{fidelity}"


class PacedEvaluator:
    """Wraps an evaluator so each trial lasts a drawn duration (a benchmark of executors, not of training)."""

    def __init__(self, inner: PlanEvaluator, time_scale: float, announce_dir: str | None = None) -> None:
        self.inner, self.time_scale, self.announce_dir = inner, time_scale, announce_dir

    def duration(self, plan_hash: str, fidelity: str, seed: int) -> float:
        rng = np.random.default_rng([seed, int(plan_hash[:8], 16)])
        return self.time_scale * REAL_SECONDS.get(fidelity, REAL_SECONDS["high"]) * math.exp(rng.normal(0, SPREAD))

    def evaluate(self, plan: Plan, fidelity: Fidelity, seed: int) -> TrialResult:
        if self.announce_dir:
            import os

            Path(self.announce_dir, f"{os.getpid()}.{trial_tag(plan.plan_hash, fidelity.name)}.running").touch()
        result = self.inner.evaluate(plan, fidelity, seed)
        time.sleep(self.duration(plan.plan_hash, fidelity.name, seed))
        return result
