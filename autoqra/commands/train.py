"""``autoqra train --plan plan.json --out DIR``: the fine-tune of a plan, saved as a PEFT adapter."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoqra.commands.common import plan_choice
from autoqra.domain import TrialStatus
from autoqra.service.requests import TrainRequest
from autoqra.service.train import prepare_train, run_train, train_summary


def run_train_command(args: argparse.Namespace) -> int:
    request = TrainRequest(plan=plan_choice(args), out=args.out, model=args.model, space=args.space, task=args.task,
                           fidelity=args.fidelity, steps=args.steps, evals=args.evals, seed=args.seed,
                           device=args.device, merge=args.merge)
    run = run_train(prepare_train(request))  # every bad input fails in prepare, before anything is written
    for line in train_summary(run):
        print(line)
    return 0 if run.status is TrialStatus.OK else 1


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from autoqra.commands.common_args import add_plan_arguments

    add_plan_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="new (or empty) directory for the adapter")
    parser.add_argument("--task", help="news, arith, extract, codebook or a .jsonl file (default: the space's task)")
    parser.add_argument("--fidelity", default="final", help="the space's schedule to train with (default: final)")
    parser.add_argument("--steps", type=int, help="train this many steps of that fidelity's batches instead")
    parser.add_argument("--evals", type=int, default=4, help="held-out evaluations along the way, the last at the "
                        "end (default 4; 0 or 1: only at the end)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; the trial seed derives from it and the "
                        "fidelity exactly as in `autoqra trial` and the search (default 0)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--merge", action="store_true", help="also write merged/: the dequantized base with the "
                        "adapters merged in, a plain 16-bit checkpoint")
