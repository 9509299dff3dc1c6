"""Executor benchmark: worker utilisation, real-trial wall time with 1 vs 2 workers, per-trial overhead.

(a) Utilisation — the share of worker-seconds spent in trials — of an ``autoqra`` search on the
    synthetic evaluator with 1, 2 and 4 local workers. Each trial sleeps a duration drawn like the
    real trials of the default space (low 10 s, high 25.5 s, 8% spread; see
    ``autoqra/executors/factories.py``) times ``--time-scale``; utilisation is the sum of those
    durations over (workers x the search's wall time), so GP fitting between asks, generation
    barriers and stage changes all count as idle. Target: >= 85% at 4 workers.
(b) Wall time of ``micro`` trials of the default model (real training) with 1 worker (all cores)
    and with 2 workers (the cores split), after one warm-up trial per worker; the ratio.
(c) Per-trial overhead of ``ray`` (a local Ray instance) and ``local`` against ``inline``: trials
    of zero duration, one in flight at a time, milliseconds per trial.

    .venv/bin/python experiments/executor_bench.py            # all three, ~10 min on 2 cores
    .venv/bin/python experiments/executor_bench.py --only a   # one part

Figures are printed and written to ``experiments/results/executor_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def utilisation(workers: int, time_scale: float, max_cost: float, preset_name: str) -> dict[str, Any]:
    from autoqra.executors.factories import PacedEvaluator, SyntheticEvaluatorFactory
    from autoqra.executors.local import LocalExecutor, plan_slots
    from autoqra.search.runner import TrialJob
    from autoqra.search.synthetic import tiny_problem
    from tests.executor_kit import synthetic_search

    factory = SyntheticEvaluatorFactory(time_scale=time_scale)
    problem = tiny_problem()
    fidelities = dict(problem.codec.space.fidelities)
    executor = LocalExecutor(factory, fidelities, plan_slots(workers, "cpu", cpu_count=os.cpu_count() or 1))
    plan = problem.codec.decode(problem.optimum_genome)
    for key in range(workers):  # warm-up: every worker has built its evaluator before the clock starts
        executor.submit(TrialJob(key=-1 - key, plan=plan, fidelity="low", seed=key))
    for _ in range(workers):
        executor.next_result()
    started = time.perf_counter()
    outcome, _ = synthetic_search(executor, factory, max_cost=max_cost, preset_name=preset_name)
    wall = time.perf_counter() - started
    pacer = PacedEvaluator(problem.evaluator, time_scale)
    busy = sum(pacer.duration(e.ask.plan.plan_hash, e.ask.fidelity, e.result.seed) for e in outcome.archive.items)
    return {"workers": workers, "trials": len(outcome.archive.items), "wall_s": wall, "trial_s": busy,
            "utilisation": busy / (workers * wall)}


def micro_wall(workers: int, trials: int) -> dict[str, Any]:
    from autoqra.executors.factories import TrialEvaluatorFactory
    from autoqra.executors.local import LocalExecutor, plan_slots
    from autoqra.search.runner import TrialJob
    from autoqra.space.model_spec import model_spec
    from autoqra.space.reference import qlora_plan
    from autoqra.space.search_space import load_space
    from autoqra.trials.evaluator import EvaluatorConfig

    space = load_space("default")
    config = EvaluatorConfig.for_space(space, device="cpu")
    plan = qlora_plan(model_spec(space.model), space.granularity)
    fidelities = dict(space.fidelities)
    executor = LocalExecutor(TrialEvaluatorFactory(config), fidelities,
                             plan_slots(workers, "cpu", cpu_count=os.cpu_count() or 1))
    try:
        for key in range(workers):  # warm-up: model load and first-trial costs, one trial per worker
            executor.submit(TrialJob(key=-1 - key, plan=plan, fidelity="micro", seed=1000 + key))
        for _ in range(workers):
            executor.next_result()
        started = time.perf_counter()
        for key in range(trials):
            executor.submit(TrialJob(key=key, plan=plan, fidelity="micro", seed=key))
        losses = [executor.next_result()[1].metrics.eval_loss for _ in range(trials)]
        wall = time.perf_counter() - started
    finally:
        executor.close()
    return {"workers": workers, "trials": trials, "wall_s": wall, "per_trial_s": wall / trials,
            "eval_losses": losses}


def overhead(kind: str, trials: int) -> dict[str, Any]:
    from autoqra.executors.factories import SyntheticEvaluatorFactory
    from autoqra.search.runner import TrialJob
    from autoqra.search.synthetic import tiny_problem

    factory = SyntheticEvaluatorFactory()
    problem = tiny_problem()
    fidelities = dict(problem.codec.space.fidelities)
    if kind == "inline":
        from autoqra.executors.inline import InlineExecutor

        executor: Any = InlineExecutor(factory.build(), fidelities)
    elif kind == "local":
        from autoqra.executors.local import LocalExecutor, plan_slots

        executor = LocalExecutor(factory, fidelities, plan_slots(1, "cpu", cpu_count=os.cpu_count() or 1))
    else:
        from autoqra.executors.ray_tasks import RayExecutor

        executor = RayExecutor(factory, fidelities, 1)
    plan = problem.codec.decode(problem.optimum_genome)
    try:
        for key in range(3):  # warm-up: worker start, evaluator built, Ray's function exported
            executor.submit(TrialJob(key=-1 - key, plan=plan, fidelity="high", seed=key))
            executor.next_result()
        times = []
        for key in range(trials):
            began = time.perf_counter()
            executor.submit(TrialJob(key=key, plan=plan, fidelity="high", seed=key))
            executor.next_result()
            times.append(time.perf_counter() - began)
    finally:
        executor.close()
    return {"executor": kind, "trials": trials, "median_ms": 1000 * statistics.median(times),
            "mean_ms": 1000 * statistics.fmean(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["a", "b", "c"], action="append", help="parts to run (default: all)")
    parser.add_argument("--time-scale", type=float, default=0.5, help="(a) trial durations x this (default 0.5)")
    parser.add_argument("--preset", default="standard", help="(a) the search's preset (default standard)")
    parser.add_argument("--max-cost", type=float, default=48.0, help="(a) the search's trial budget (default 48, "
                        "the standard preset's)")
    parser.add_argument("--micro-trials", type=int, default=4, help="(b) timed micro trials (default 4)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "executor_bench.json")
    args = parser.parse_args()
    parts = args.only or ["a", "b", "c"]
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    if "a" in parts:
        rows = [utilisation(w, args.time_scale, args.max_cost, args.preset) for w in (4, 2, 1)][::-1]
        for r in rows:
            print(f"(a) {r['workers']} worker(s): {r['trials']} trials, {r['trial_s']:.1f} s of trials in "
                  f"{r['wall_s']:.1f} s wall -> utilisation {100 * r['utilisation']:.1f}%", flush=True)
        results["utilisation"] = {"time_scale": args.time_scale, "preset": args.preset, "max_cost": args.max_cost,
                                  "rows": rows}
    if "b" in parts:
        rows = [micro_wall(w, args.micro_trials) for w in (1, 2)]
        ratio = rows[0]["wall_s"] / rows[1]["wall_s"]
        for r in rows:
            print(f"(b) {r['workers']} worker(s): {r['trials']} micro trials in {r['wall_s']:.1f} s "
                  f"({r['per_trial_s']:.1f} s a trial)", flush=True)
        print(f"(b) 1 worker / 2 workers wall ratio: {ratio:.2f}x", flush=True)
        results["micro"] = {"rows": rows, "ratio_1_over_2": ratio}
    if "c" in parts:
        rows = [overhead(kind, 40) for kind in ("inline", "local", "ray")]
        base = rows[0]["median_ms"]
        for r in rows:
            print(f"(c) {r['executor']}: {r['median_ms']:.1f} ms a trial (median; +{r['median_ms'] - base:.1f} ms "
                  "over inline)", flush=True)
        results["overhead"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
