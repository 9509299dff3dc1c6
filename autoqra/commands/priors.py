"""``autoqra priors``: measure per-group quantization sensitivity and adaptation demand."""

from __future__ import annotations

import argparse
import time

from autoqra.service.priors import prepare_priors, run_priors
from autoqra.service.requests import PriorsRequest


def run_priors_command(args: argparse.Namespace) -> int:
    request = PriorsRequest(model=args.model, space=args.space, task=args.task, calibration=args.calibration,
                            seq_len=args.seq_len, demand_batches=args.demand_batches, seed=args.seed, out=args.out)
    prepared = prepare_priors(request)  # every bad input fails here, before any measurement
    started = time.perf_counter()
    priors = run_priors(prepared)
    print(f"{'group':<40} {'sensitivity':>12} {'demand':>12}")
    for g in priors.groups:
        print(f"{g.name:<40} {g.sensitivity:>12.5f} {g.demand:>12.5g}")
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0
