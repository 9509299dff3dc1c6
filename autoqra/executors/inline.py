"""The in-process executor: one evaluator, trials one after another in this process (the default)."""

from __future__ import annotations

from collections import deque

from autoqra.domain import Fidelity, TrialResult
from autoqra.search.runner import PlanEvaluator, TrialJob


class InlineExecutor:
    """Runs jobs in submission order with one evaluator; one trial in flight."""

    def __init__(self, evaluator: PlanEvaluator, fidelities: dict[str, Fidelity]) -> None:
        self.evaluator = evaluator
        self.fidelities = fidelities
        self._queue: deque[TrialJob] = deque()

    @property
    def workers(self) -> int:
        return 1

    def submit(self, job: TrialJob) -> None:
        self._queue.append(job)

    def next_result(self) -> tuple[TrialJob, TrialResult]:
        job = self._queue.popleft()
        return job, self.evaluator.evaluate(job.plan, self.fidelities[job.fidelity], job.seed)

    def close(self) -> None:
        self._queue.clear()
