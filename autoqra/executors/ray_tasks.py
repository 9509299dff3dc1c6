"""The Ray executor: each trial is a Ray task with ``num_cpus`` and ``num_gpus``.

``num_gpus`` packing: a trial asks for the share of one GPU its predicted peak needs with 25%
headroom, rounded up to eighths, at most one GPU::

    num_gpus = min(1, ceil(8 * 1.25 * predicted_peak_bytes / gpu_bytes) / 8)

so several small ``low`` trials share a GPU and a trial near the GPU's size gets one to itself. On a
cluster without GPUs a trial asks ``num_cpus`` only (the cores per worker). A task whose worker
process dies is retried by Ray (``max_retries=1``); a second death is recorded as ``failed``. Each
Ray worker process keeps its evaluator between tasks (one model per process; quantized layers come
from the on-disk cache).

Without ``address`` a local Ray instance is started for the run (127.0.0.1 only, no dashboard) and
stopped at the end; ``auto`` or ``HOST:PORT`` joins a running cluster (``ray start --head``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from autoqra.domain import Fidelity, TrialResult
from autoqra.executors.base import EvaluatorFactory, ExecutorError, failed_result, quiet_worker
from autoqra.search.runner import TrialJob

log = logging.getLogger(__name__)

HEADROOM = 1.25
GPU_SHARES = 8
MAX_RETRIES = 1

_EVALUATORS: dict[Any, Any] = {}  # per Ray worker process: factory -> evaluator, reused across tasks


def gpu_share(predicted_peak_bytes: int, gpu_bytes: int) -> float:
    """The fraction of one GPU a trial asks for (see the module docstring)."""
    if gpu_bytes <= 0:
        raise ValueError("gpu_bytes must be positive")
    shares = math.ceil(GPU_SHARES * HEADROOM * max(predicted_peak_bytes, 1) / gpu_bytes)
    return min(1.0, shares / GPU_SHARES)


def _run_trial(factory: EvaluatorFactory, fidelity: Fidelity, job: TrialJob, threads: int) -> TrialResult:
    import torch

    torch.set_num_threads(max(1, threads))
    evaluator = _EVALUATORS.get(factory)
    if evaluator is None:
        quiet_worker()
        evaluator = _EVALUATORS[factory] = factory.build()
    return evaluator.evaluate(job.plan, fidelity, job.seed)


def import_ray() -> Any:
    """``ray``, imported with this machine's settings: Ray reads them when it is first imported, and
    without them it resolves 127.0.0.1 to a non-loopback address here and never reaches the head."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    return ray


def init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` or start a local instance; True when this call started it."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address and address != "auto":
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ExecutorError(f"cannot reach {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return not address


def check_reachable(address: str) -> None:
    """A TCP connection to the head's HOST:PORT within 5 s (Ray itself waits minutes on a wrong one)."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ExecutorError(f"--ray-address {address!r}: give auto or HOST:PORT of the Ray head (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise ExecutorError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


class RayExecutor:
    """Trials as Ray tasks; at most ``workers`` in flight (the pipeline keeps that many)."""

    def __init__(self, factory: EvaluatorFactory, fidelities: dict[str, Fidelity], workers: int, *,
                 address: str | None = None, device: str = "cpu", cpus_per_trial: int | None = None) -> None:
        ray = import_ray()

        if workers < 1:
            raise ExecutorError(f"--workers {workers}: at least one worker is needed")
        self.factory, self.fidelities, self._workers, self.device = factory, fidelities, workers, device
        self._started = init_ray(address, num_cpus=None)
        resources = ray.cluster_resources()
        cpus = int(resources.get("CPU", 1))
        gpus = int(resources.get("GPU", 0))
        if device == "cuda" and gpus < 1:
            self.close()
            raise ExecutorError("trials run on CUDA but the Ray cluster has no GPU")
        self.cpus_per_trial = cpus_per_trial or max(1, cpus // workers)
        self.gpu_bytes = self._gpu_bytes() if device == "cuda" else 0
        self._remote = ray.remote(_run_trial)
        self._inflight: dict[Any, TrialJob] = {}
        log.info(f"executor: ray, {workers} trial(s) in flight, {self.cpus_per_trial} CPU(s) per trial; "
                 f"cluster {cpus} CPU(s), {gpus} GPU(s){' (local instance)' if self._started else ''}")

    @staticmethod
    def _gpu_bytes() -> int:
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)

    @property
    def workers(self) -> int:
        return self._workers

    def resources(self, job: TrialJob) -> dict[str, float]:
        if self.device != "cuda":
            return {"num_cpus": self.cpus_per_trial, "num_gpus": 0}
        return {"num_cpus": self.cpus_per_trial, "num_gpus": gpu_share(job.predicted_peak_bytes, self.gpu_bytes)}

    def submit(self, job: TrialJob) -> None:
        options = self.resources(job)
        task = self._remote.options(max_retries=MAX_RETRIES, retry_exceptions=False, **options)
        ref = task.remote(self.factory, self.fidelities[job.fidelity], job, int(options["num_cpus"]))
        self._inflight[ref] = job

    def next_result(self) -> tuple[TrialJob, TrialResult]:
        import ray
        from ray.exceptions import NodeDiedError, RayTaskError, WorkerCrashedError

        if not self._inflight:
            raise ExecutorError("no trial in flight to wait for")
        ready, _ = ray.wait(list(self._inflight), num_returns=1)
        ref = ready[0]
        job = self._inflight.pop(ref)
        try:
            return job, ray.get(ref)
        except (WorkerCrashedError, NodeDiedError) as exc:
            error = f"the Ray worker died on each of {MAX_RETRIES + 1} attempts ({type(exc).__name__})"
            log.warning(f"executor: {error} running {job.plan.plan_hash[:8]}; recorded as failed")
            return job, failed_result(job, self.fidelities[job.fidelity], self.factory.task, error)
        except RayTaskError as exc:  # the evaluator raised: a setup or programming error, as inline
            raise exc.as_instanceof_cause() from None

    def close(self) -> None:
        import ray

        for ref in list(getattr(self, "_inflight", {})):
            ray.cancel(ref, force=True)
        self._inflight = {}
        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False
