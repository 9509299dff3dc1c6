"""Benchmark: time of one peak-memory estimate for random mixed plans of a 32-block model.

Target (issue 2): <= 5 ms per plan, since the search calls the model thousands of times.
Run: .venv/bin/python experiments/estimate_speed.py [--model llama-3.1-8b] [--plans 2000]
"""

from __future__ import annotations

import argparse
import random
import time

from autoqra.domain import Plan, PlanGroup
from autoqra.space.memory import MemoryModel
from autoqra.space.model_spec import model_spec
from autoqra.space.search_space import load_space

TARGET_MS = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--space", default="llama-3.1-8b")
    parser.add_argument("--plans", type=int, default=2000)
    parser.add_argument("--granularity", choices=["block", "module"], default="block")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    space = load_space(args.space)
    t0 = time.perf_counter()
    spec = model_spec(space.model)
    spec_s = time.perf_counter() - t0
    memory = MemoryModel(spec, space.setup)
    rng = random.Random(args.seed)
    groups = spec.groups(args.granularity)
    plans = [
        Plan(model=spec.name, granularity=args.granularity, groups=tuple(
            PlanGroup(name=n, modules=m, format=rng.choice(space.choices.formats), rank=rng.choice(space.choices.ranks))
            for n, m in groups))
        for _ in range(args.plans)
    ]
    memory.estimate(plans[0])  # warm the per-shape storage cache, as a search would
    t0 = time.perf_counter()
    totals = [memory.total(p) for p in plans]
    per_plan_ms = (time.perf_counter() - t0) / len(plans) * 1e3
    print(f"model {spec.name}: {spec.num_blocks} blocks, {len(spec.linears)} linears, {len(groups)} groups "
          f"({args.granularity}); spec from config in {spec_s:.2f} s")
    print(f"{len(plans)} random plans from space {space.name}: {per_plan_ms:.3f} ms per estimate "
          f"(target <= {TARGET_MS} ms: {TARGET_MS / per_plan_ms:.0f}x headroom)")
    print(f"predicted peaks: min {min(totals) / 2**30:.2f} GiB, max {max(totals) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
