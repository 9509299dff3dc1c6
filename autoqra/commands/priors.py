"""``autoqra priors``: measure per-group quantization sensitivity and adaptation demand."""

from __future__ import annotations

import argparse
import sys
import time

from autoqra.commands.common import space_for, write_text
from autoqra.errors import AutoQRAError
from autoqra.space.model_spec import model_spec


def run_priors(args: argparse.Namespace) -> int:
    from autoqra.trials.importance import measure_space_priors

    if min(args.calibration, args.demand_batches) < 1 or args.seq_len < 8:
        raise AutoQRAError("--calibration and --demand-batches must be >= 1, --seq-len >= 8")
    space = space_for(args)
    spec = model_spec(space.model)
    task = args.task or space.task
    lowest = space.ladder(spec)[0]
    if not lowest.quantized:
        raise AutoQRAError(f"space {space.name} has no quantized format to measure sensitivity with")
    groups = spec.groups(space.granularity)
    dtype = space.training.compute_dtype
    print(f"priors: model {space.model}, task {task}, {len(groups)} {space.granularity} groups, sensitivity at "
          f"{lowest.label} on {args.calibration} x {args.seq_len} tokens, demand over {args.demand_batches} batches, "
          f"{dtype}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    priors = measure_space_priors(
        model=space.model, granularity=space.granularity, lowest=lowest, compute_dtype=dtype,
        task=task, calibration=args.calibration, seq_len=args.seq_len, demand_batches=args.demand_batches,
        seed=args.seed,
    )
    write_text(args.out, priors.to_json() + "\n")
    print(f"{'group':<40} {'sensitivity':>12} {'demand':>12}")
    for g in priors.groups:
        print(f"{g.name:<40} {g.sensitivity:>12.5f} {g.demand:>12.5g}")
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0
