"""The worker pool and Ray: the same trials as inline, every trial recorded once, dead workers retried.

Synthetic evaluator (training is not the point here); a real spawned process pool, a real Ray head
(the ``ray_cluster`` fixture), a real SQLite ledger.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from autoqra.executors.factories import SyntheticEvaluatorFactory, trial_tag
from autoqra.executors.inline import InlineExecutor
from autoqra.executors.local import LocalExecutor, plan_slots
from autoqra.search.synthetic import tiny_problem
from tests.executor_kit import synthetic_search, trial_keys


def _fidelities(factory):
    return dict(tiny_problem(factory.blocks, factory.budget_position, factory.seed).codec.space.fidelities)


@pytest.fixture(scope="module")
def inline_keys():
    factory = SyntheticEvaluatorFactory()
    outcome, _ = synthetic_search(InlineExecutor(factory.build(), _fidelities(factory)), factory)
    return trial_keys(outcome)


def _check_recorded_once(outcome, ledger):
    from optuna.trial import TrialState

    entries = ledger.entries()
    keys = [(e.result.plan.plan_hash, e.fidelity, e.result.seed) for e in entries]
    assert len(entries) == len(outcome.archive.items)
    assert max(Counter(keys).values()) == 1, "a trial was recorded twice"
    assert Counter(keys) == Counter(trial_keys(outcome).keys())
    assert not ledger.study.get_trials(states=(TrialState.RUNNING,)), "a trial was left RUNNING"


def _check_same_results(keys, inline_keys, at_least=8):
    common = set(keys) & set(inline_keys)
    assert len(common) >= at_least, f"only {len(common)} trials in common with the inline run"  # generation 0
    assert all(keys[k] == inline_keys[k] for k in common)


def test_local_pool_of_two_records_every_trial_once_with_inline_results(inline_keys, tmp_path):
    factory = SyntheticEvaluatorFactory()
    executor = LocalExecutor(factory, _fidelities(factory), plan_slots(2, "cpu", cpu_count=2))
    assert [s.threads for s in executor.slots] == [1, 1]
    outcome, ledger = synthetic_search(executor, factory, tmp_path)
    _check_recorded_once(outcome, ledger)
    _check_same_results(trial_keys(outcome), inline_keys)
    assert executor.replaced == 0


def test_ray_executor_records_every_trial_once_with_inline_results(inline_keys, tmp_path, ray_cluster):
    from autoqra.executors.ray_tasks import RayExecutor

    factory = SyntheticEvaluatorFactory()
    executor = RayExecutor(factory, _fidelities(factory), 2, address=ray_cluster["address"])
    assert executor.cpus_per_trial == 1  # 2 CPUs of the head between 2 trials in flight
    outcome, ledger = synthetic_search(executor, factory, tmp_path)
    _check_recorded_once(outcome, ledger)
    _check_same_results(trial_keys(outcome), inline_keys)


def _kill_first_trial(folder: Path, killed: list[str]) -> threading.Thread:
    """SIGKILL the process of the first trial that announces itself in ``folder``, once."""
    def run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = sorted(folder.glob("*.running"))
            if found:
                pid, tag = found[0].name.split(".")[:2]
                time.sleep(0.3)  # mid-trial
                os.kill(int(pid), signal.SIGKILL)
                killed.extend([pid, tag])
                return
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_killed_local_worker_is_replaced_and_its_trial_retried(inline_keys, tmp_path):
    folder = tmp_path / "announce"
    folder.mkdir()
    factory = SyntheticEvaluatorFactory(time_scale=0.1, announce_dir=str(folder))  # low trials ~1 s
    executor = LocalExecutor(factory, _fidelities(factory), plan_slots(2, "cpu", cpu_count=2))
    killed: list[str] = []
    thread = _kill_first_trial(folder, killed)
    outcome, ledger = synthetic_search(executor, factory, tmp_path, max_cost=4.0)
    thread.join()
    assert killed, "no trial was killed"
    assert executor.replaced == 1
    _check_recorded_once(outcome, ledger)
    retried = [e for e in outcome.archive.items if trial_tag(e.ask.plan.plan_hash, e.ask.fidelity) == killed[1]]
    assert len(retried) == 1 and retried[0].ok  # the retry succeeded; the death cost no result
    _check_same_results(trial_keys(outcome), inline_keys, at_least=4)


def test_a_killed_ray_worker_is_retried_by_ray(inline_keys, tmp_path, ray_cluster):
    from autoqra.executors.ray_tasks import RayExecutor

    folder = tmp_path / "announce"
    folder.mkdir()
    factory = SyntheticEvaluatorFactory(time_scale=0.1, announce_dir=str(folder))
    executor = RayExecutor(factory, _fidelities(factory), 2, address=ray_cluster["address"])
    killed: list[str] = []
    thread = _kill_first_trial(folder, killed)
    outcome, ledger = synthetic_search(executor, factory, tmp_path, max_cost=4.0)
    thread.join()
    assert killed, "no trial was killed"
    _check_recorded_once(outcome, ledger)
    retried = [e for e in outcome.archive.items if trial_tag(e.ask.plan.plan_hash, e.ask.fidelity) == killed[1]]
    assert len(retried) == 1 and retried[0].ok
    assert len(list(folder.glob(f"*.{killed[1]}.running"))) == 2  # it ran in a second Ray worker process
    _check_same_results(trial_keys(outcome), inline_keys, at_least=4)


def test_a_trial_whose_worker_dies_twice_is_recorded_failed(tmp_path):
    """Both attempts killed: the job still comes back, as ``failed`` with the reason."""
    from autoqra.search.runner import TrialJob

    folder = tmp_path / "announce"
    folder.mkdir()
    factory = SyntheticEvaluatorFactory(time_scale=0.2, announce_dir=str(folder))  # a high trial ~5 s
    problem = tiny_problem()
    plan = problem.codec.decode(problem.optimum_genome)
    killed: set[int] = set()

    def killer() -> None:  # kill every process that starts the trial, twice
        deadline = time.monotonic() + 120
        while len(killed) < 2 and time.monotonic() < deadline:
            for path in folder.glob(f"*.{trial_tag(plan.plan_hash, 'high')}.running"):
                pid = int(path.name.split(".")[0])
                if pid not in killed:
                    time.sleep(0.2)
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.05)

    executor = LocalExecutor(factory, _fidelities(factory), plan_slots(1, "cpu", cpu_count=2))
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        executor.submit(TrialJob(key=7, plan=plan, fidelity="high", seed=11))
        back, result = executor.next_result()
    finally:
        executor.close()
    thread.join()
    assert len(killed) == 2 and executor.replaced == 2
    assert back.key == 7
    assert result.status.value == "failed"
    assert "died on each of 2 attempts" in result.error and "SIGKILL" in result.error


def test_pool_input_errors_are_one_line():
    from autoqra.executors.base import ExecutorError

    with pytest.raises(ExecutorError, match="at least one worker"):
        plan_slots(0, "cpu", cpu_count=2)
    with pytest.raises(ExecutorError, match="needs 3 GPU"):
        plan_slots(3, "cuda", cpu_count=16, gpu_count=1)
    assert [s.cuda_device for s in plan_slots(4, "cuda", cpu_count=16, gpu_count=2, trials_per_gpu=2)] == \
        ["0", "1", "0", "1"]
    with pytest.raises(ExecutorError, match="applies to CUDA"):
        plan_slots(2, "cpu", cpu_count=2, trials_per_gpu=2)
    # without --trials-per-gpu a GPU takes what the budget fits: plans within 10 GiB on 80 GiB -> 6
    from autoqra.executors.local import fit_per_gpu

    assert fit_per_gpu(80 * 2**30, 10 * 2**30) == 6
    assert len(plan_slots(6, "cuda", cpu_count=16, gpu_count=1, fit_per_gpu=6)) == 6
    with pytest.raises(ExecutorError, match="what fits the budget"):
        plan_slots(7, "cuda", cpu_count=16, gpu_count=1, fit_per_gpu=6)


def test_gpu_packing_rule():
    from autoqra.executors.ray_tasks import gpu_share

    gib = 2**30
    assert gpu_share(1 * gib, 80 * gib) == 0.125  # small low trials: 8 share a GPU
    assert gpu_share(20 * gib, 80 * gib) == 0.375  # 25 GiB with headroom -> 3/8
    assert gpu_share(70 * gib, 80 * gib) == 1.0
