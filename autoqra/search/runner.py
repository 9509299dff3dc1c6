"""What the search loop needs of whatever runs its trials (the executors of :mod:`autoqra.executors`).

A runner never drops a job: every submitted job comes back from ``next_result`` exactly once, as the
evaluator's result or, when the worker running it died twice, as a ``failed`` result naming the reason.
The contract lives here, beside its one caller, so that the search depends on no executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from autoqra.domain import Fidelity, Plan, TrialResult


@dataclass(frozen=True)
class TrialJob:
    """One trial to run: ``key`` is the pipeline's handle; the predicted peak (bytes, at the budget's
    training setup) lets an executor pack small trials onto one GPU."""

    key: int
    plan: Plan
    fidelity: str
    seed: int
    predicted_peak_bytes: int = 0


class PlanEvaluator(Protocol):
    def evaluate(self, plan: Plan, fidelity: Fidelity, seed: int) -> TrialResult: ...


class TrialRunner(Protocol):
    """Runs trial jobs, several at once where it has the workers."""

    @property
    def workers(self) -> int:
        """How many trials may be in flight at once."""
        ...

    def submit(self, job: TrialJob) -> None: ...

    def next_result(self) -> tuple[TrialJob, TrialResult]:
        """Block until a submitted trial ends; return it and its result (completion order)."""
        ...

    def close(self) -> None: ...
