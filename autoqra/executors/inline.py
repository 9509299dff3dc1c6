"""The in-process executor: one evaluator, trials one after another in this process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from autoqra.domain import Fidelity, Plan, TrialResult


class PlanEvaluator(Protocol):
    def evaluate(self, plan: Plan, fidelity: Fidelity, seed: int) -> TrialResult: ...


class InlineExecutor:
    """Runs ``(plan, fidelity name, seed)`` requests sequentially with one evaluator."""

    def __init__(self, evaluator: PlanEvaluator, fidelities: dict[str, Fidelity]) -> None:
        self.evaluator = evaluator
        self.fidelities = fidelities

    @property
    def workers(self) -> int:
        return 1

    def run(self, requests: Sequence[tuple[Plan, str, int]]) -> Iterator[tuple[int, TrialResult]]:
        for index, (plan, fidelity, seed) in enumerate(requests):
            yield index, self.evaluator.evaluate(plan, self.fidelities[fidelity], seed)
