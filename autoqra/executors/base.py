"""The executor contract: the pipeline submits trial requests and takes results in completion order.

An executor never drops a request: every submitted request comes back from ``next_result`` exactly
once, as the evaluator's result or, when the worker running it died twice, as a ``failed`` result
naming the reason. Evaluators are built *inside* the workers from a picklable factory, so a worker
process or a Ray task owns its model and the on-disk caches are what workers share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from autoqra.domain import Fidelity, PhaseSeconds, Plan, TrialMetrics, TrialResult, TrialStatus
from autoqra.errors import AutoQRAError

EXECUTORS = ("inline", "local", "ray")


@dataclass(frozen=True)
class TrialRequest:
    """One trial to run: ``key`` is the pipeline's handle; the predicted peak (bytes, at the budget's
    training setup) lets an executor pack small trials onto one GPU."""

    key: int
    plan: Plan
    fidelity: str
    seed: int
    predicted_peak_bytes: int = 0


class PlanEvaluator(Protocol):
    def evaluate(self, plan: Plan, fidelity: Fidelity, seed: int) -> TrialResult: ...


class EvaluatorFactory(Protocol):
    """Builds the evaluator in the process that runs trials; frozen and picklable."""

    @property
    def task(self) -> str: ...

    def build(self) -> PlanEvaluator: ...


class TrialRunner(Protocol):
    """What the pipeline needs of an executor."""

    @property
    def workers(self) -> int:
        """How many trials may be in flight at once."""
        ...

    def submit(self, request: TrialRequest) -> None: ...

    def next_result(self) -> tuple[TrialRequest, TrialResult]:
        """Block until a submitted trial ends; return it and its result (completion order)."""
        ...

    def close(self) -> None: ...


class ExecutorError(AutoQRAError):
    """An executor that cannot start or lost its workers (one line for the user)."""


def quiet_worker() -> None:
    """A worker prints no per-trial progress bars or library chatter (the search reports its trials)."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def failed_result(request: TrialRequest, fidelity: Fidelity, task: str, error: str) -> TrialResult:
    """The result recorded for a trial no worker could finish (the worker died on each attempt)."""
    return TrialResult(
        plan=request.plan, fidelity=fidelity, task=task, seed=request.seed, status=TrialStatus.FAILED,
        objective=None, metric_name="eval_loss", metrics=TrialMetrics(), train_losses=(),
        predicted_peak_bytes=request.predicted_peak_bytes, measured_peak_bytes=None, measured_static_bytes=0,
        peak_rss_bytes=None, device="unknown", phases=PhaseSeconds(), versions=(), error=error,
    )
