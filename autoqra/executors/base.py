"""What the executors share. They implement :class:`autoqra.search.runner.TrialRunner` (the contract
the pipeline runs on). Evaluators are built *inside* the workers from a picklable factory, so a worker
process or a Ray task owns its model and the on-disk caches are what workers share.
"""

from __future__ import annotations

from typing import Protocol

from autoqra.domain import Fidelity, PhaseSeconds, TrialMetrics, TrialResult, TrialStatus
from autoqra.errors import AutoQRAError
from autoqra.search.runner import PlanEvaluator, TrialJob

EXECUTORS = ("inline", "local", "ray")


class EvaluatorFactory(Protocol):
    """Builds the evaluator in the process that runs trials; frozen and picklable."""

    @property
    def task(self) -> str: ...

    def build(self) -> PlanEvaluator: ...


class ExecutorError(AutoQRAError):
    """An executor that cannot start or lost its workers (one line for the user)."""


def quiet_worker() -> None:
    """A worker prints no per-trial progress bars or library chatter (the search reports its trials)."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def failed_result(job: TrialJob, fidelity: Fidelity, task: str, error: str) -> TrialResult:
    """The result recorded for a trial no worker could finish (the worker died on each attempt)."""
    return TrialResult(
        plan=job.plan, fidelity=fidelity, task=task, seed=job.seed, status=TrialStatus.FAILED,
        objective=None, metric_name="eval_loss", metrics=TrialMetrics(), train_losses=(),
        predicted_peak_bytes=job.predicted_peak_bytes, measured_peak_bytes=None, measured_static_bytes=0,
        peak_rss_bytes=None, device="unknown", phases=PhaseSeconds(), versions=(), error=error,
    )
