"""The in-process executor: one evaluator, trials one after another in this process (the default)."""

from __future__ import annotations

from collections import deque

from autoqra.domain import Fidelity, TrialResult
from autoqra.executors.base import PlanEvaluator, TrialRequest


class InlineExecutor:
    """Runs requests in submission order with one evaluator; one trial in flight."""

    def __init__(self, evaluator: PlanEvaluator, fidelities: dict[str, Fidelity]) -> None:
        self.evaluator = evaluator
        self.fidelities = fidelities
        self._queue: deque[TrialRequest] = deque()

    @property
    def workers(self) -> int:
        return 1

    def submit(self, request: TrialRequest) -> None:
        self._queue.append(request)

    def next_result(self) -> tuple[TrialRequest, TrialResult]:
        request = self._queue.popleft()
        return request, self.evaluator.evaluate(request.plan, self.fidelities[request.fidelity], request.seed)

    def close(self) -> None:
        self._queue.clear()
