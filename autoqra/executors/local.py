"""The local pool: N spawned worker processes on this machine, each owning a slice of the hardware.

Workers are *spawned* (a fresh interpreter: forking after torch is imported is unsafe) and build
their evaluator from a picklable factory, so each owns one model; quantized layers are shared
through the on-disk layer cache. On CPU the cores are split between workers (torch threads per
worker); with CUDA each worker sees one GPU through ``CUDA_VISIBLE_DEVICES``, several workers per GPU
when ``trials_per_gpu`` says so.

A worker that dies (segfault, SIGKILL, CUDA error that kills the process) is replaced and its trial
is retried once; a second death records the trial as ``failed`` with the reason. An out-of-memory
trial is a *result* (status ``oom``) from the evaluator, so it is never retried.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from autoqra.domain import Fidelity, TrialResult
from autoqra.errors import AutoQRAError
from autoqra.executors.base import EvaluatorFactory, ExecutorError, failed_result, quiet_worker
from autoqra.search.runner import TrialJob

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a trial whose worker died is retried once
MAX_BARREN = 3  # a slot whose workers die this often in a row without a result stops the search


@dataclass(frozen=True)
class WorkerSlot:
    """The hardware of one worker: torch threads, and the GPU it sees (None on CPU)."""

    index: int
    threads: int
    cuda_device: str | None = None


def plan_slots(workers: int, device: str, *, cpu_count: int, gpu_count: int = 0,
               trials_per_gpu: int | None = None, fit_per_gpu: int = 1) -> list[WorkerSlot]:
    """Split the machine between ``workers``: cores evenly; GPUs round-robin, ``trials_per_gpu`` each.

    Without ``trials_per_gpu`` a GPU takes as many workers as ``fit_per_gpu`` says fit (the GPU's
    memory over the budget with 25% headroom: every plan of the search peaks within the budget),
    at least one."""
    if workers < 1:
        raise ExecutorError(f"--workers {workers}: at least one worker is needed")
    threads = max(1, cpu_count // workers)
    if device != "cuda":
        if trials_per_gpu is not None:
            raise ExecutorError("--trials-per-gpu applies to CUDA trials; this search runs on the CPU")
        return [WorkerSlot(i, threads) for i in range(workers)]
    if gpu_count < 1:
        raise ExecutorError("no CUDA device is visible to run trials on")
    per_gpu = trials_per_gpu or max(1, fit_per_gpu)
    if workers > gpu_count * per_gpu:
        how = f"{per_gpu} trial(s) per GPU" + ("" if trials_per_gpu else " (what fits the budget)")
        raise ExecutorError(f"--workers {workers} needs {-(-workers // per_gpu)} GPU(s) at {how}, but {gpu_count} "
                            f"{'is' if gpu_count == 1 else 'are'} visible; lower --workers or set --trials-per-gpu")
    return [WorkerSlot(i, threads, str(i % gpu_count)) for i in range(workers)]


def fit_per_gpu(gpu_bytes: int, budget_bytes: int, headroom: float = 1.25) -> int:
    """Trials of a search under ``budget_bytes`` that fit one GPU of ``gpu_bytes`` side by side."""
    return max(1, int(gpu_bytes // (headroom * budget_bytes)))


def _worker_main(factory: EvaluatorFactory, fidelities: dict[str, Fidelity], slot: WorkerSlot,
                 conn: Connection) -> None:
    """A worker process: set its hardware slice before torch is imported, then run trials until told to stop."""
    os.environ["OMP_NUM_THREADS"] = str(slot.threads)
    if slot.cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.cuda_device
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the search, which stops the pool
    import torch

    torch.set_num_threads(slot.threads)
    try:
        quiet_worker()
        evaluator = factory.build()
    except BaseException as exc:  # reported to the search, which stops with it
        conn.send(("error", None, _describe(exc), exc if isinstance(exc, AutoQRAError) else None))
        return
    key = None
    try:
        while True:
            job = conn.recv()
            if job is None:
                return
            key = job.key
            result = evaluator.evaluate(job.plan, fidelities[job.fidelity], job.seed)
            conn.send(("result", job.key, result, None))
            key = None
    except BaseException as exc:  # a setup or programming error: the search stops with it
        conn.send(("error", key, _describe(exc), exc if isinstance(exc, AutoQRAError) else None))


def _describe(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc)).strip()


class _Worker:
    def __init__(self, process: Any, conn: Connection, slot: WorkerSlot) -> None:
        self.process, self.conn, self.slot = process, conn, slot
        self.job: TrialJob | None = None
        self.results = 0  # trials this process finished


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class LocalExecutor:
    """``workers`` spawned processes; jobs beyond the idle workers wait in a queue."""

    def __init__(self, factory: EvaluatorFactory, fidelities: dict[str, Fidelity], slots: list[WorkerSlot]) -> None:
        import multiprocessing

        self.factory, self.fidelities, self.slots = factory, fidelities, slots
        self._ctx = multiprocessing.get_context("spawn")
        self._queue: deque[TrialJob] = deque()
        self._attempts: dict[int, int] = {}
        self._pool = [self._start(slot) for slot in slots]
        self.replaced = 0  # workers restarted after a death (reported by the benchmark and tests)
        self._barren: dict[int, int] = {}  # slot -> workers in a row that died before finishing a trial

    @property
    def workers(self) -> int:
        return len(self.slots)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._pool]

    def busy_pids(self) -> dict[int, int]:
        """``{job key: worker pid}`` of the trials running now (tests kill one of them)."""
        return {w.job.key: w.process.pid for w in self._pool if w.job is not None}

    def _start(self, slot: WorkerSlot) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(self.factory, self.fidelities, slot, child),
                                    name=f"autoqra-worker-{slot.index}", daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent, slot)

    def submit(self, job: TrialJob) -> None:
        self._queue.append(job)
        self._dispatch()

    def _dispatch(self) -> None:
        for worker in self._pool:
            if not self._queue:
                return
            if worker.job is None and worker.process.is_alive():
                job = self._queue.popleft()
                self._attempts[job.key] = self._attempts.get(job.key, 0) + 1
                worker.job = job
                try:
                    worker.conn.send(job)
                except (BrokenPipeError, OSError):  # died just now: its death is handled by next_result
                    pass

    def next_result(self) -> tuple[TrialJob, TrialResult]:
        while True:
            for worker in list(self._pool):  # idle workers that died since: replaced before dispatching
                if worker.job is None and not worker.process.is_alive():
                    self._drain_error(worker)
                    self._replace(worker)
            self._dispatch()
            busy = [w for w in self._pool if w.job is not None]
            if not busy:
                raise ExecutorError("no trial in flight to wait for")
            ready = set(wait([w.conn for w in self._pool] + [w.process.sentinel for w in self._pool]))
            for worker in list(self._pool):
                if worker.conn in ready and worker.conn.poll():
                    try:
                        kind, key, payload, exc = worker.conn.recv()
                    except (EOFError, OSError):
                        kind = "dead"
                    if kind == "result":
                        job = worker.job
                        assert job is not None and job.key == key
                        worker.job = None
                        worker.results += 1
                        self._barren.pop(worker.slot.index, None)
                        self._attempts.pop(key, None)
                        return job, payload
                    if kind == "error":
                        self.close()
                        if exc is not None:
                            raise exc
                        raise RuntimeError(f"a worker process failed:\n{payload}")
                if worker.process.sentinel in ready and not worker.process.is_alive():
                    failed = self._replace(worker)
                    if failed is not None:
                        return failed

    def _drain_error(self, worker: _Worker) -> None:
        """An error the dead worker reported before it exited is raised (the search stops with it)."""
        if worker.conn.poll():
            try:
                kind, _, payload, exc = worker.conn.recv()
            except (EOFError, OSError):
                return
            if kind == "error":
                self.close()
                if exc is not None:
                    raise exc
                raise RuntimeError(f"a worker process failed:\n{payload}")

    def _replace(self, worker: _Worker) -> tuple[TrialJob, TrialResult] | None:
        """A worker died: start another in its slot; retry its trial once, then record it as failed."""
        worker.process.join()
        reason = _death_reason(worker.process.exitcode)
        worker.conn.close()
        if worker.results == 0:
            self._barren[worker.slot.index] = self._barren.get(worker.slot.index, 0) + 1
            if self._barren[worker.slot.index] > MAX_BARREN:
                self.close()
                raise ExecutorError(f"worker processes keep dying before finishing a trial ({reason}, "
                                    f"{MAX_BARREN + 1} in a row); see the log above")
        self._pool[self._pool.index(worker)] = self._start(worker.slot)
        self.replaced += 1
        job = worker.job
        if job is None:
            log.warning(f"executor: idle worker {worker.slot.index} died ({reason}); replaced")
            return None
        if self._attempts.get(job.key, 0) < MAX_ATTEMPTS:
            log.warning(f"executor: worker {worker.slot.index} died running {job.plan.plan_hash[:8]} "
                        f"({job.fidelity}; {reason}); replaced, the trial is retried")
            self._queue.appendleft(job)
            return None
        self._attempts.pop(job.key, None)
        log.warning(f"executor: worker {worker.slot.index} died again running {job.plan.plan_hash[:8]} "
                    f"({reason}); the trial is recorded as failed")
        error = f"the worker process died on each of {MAX_ATTEMPTS} attempts ({reason})"
        return job, failed_result(job, self.fidelities[job.fidelity], self.factory.task, error)

    def close(self) -> None:
        self._queue.clear()
        for worker in self._pool:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in self._pool:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)
            worker.conn.close()
        self._pool = []
