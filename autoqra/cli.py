"""Command line: ``python -m autoqra <command>``.

Heavy imports (torch, transformers) happen inside the commands, so ``--help`` stays fast. Errors a
user can cause print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from autoqra.errors import AutoQRAError

BUDGET_HELP = (
    "peak training memory: 16GB (GB = GiB = 2^30 bytes), 16000MB, raw bytes, 4bits (average stored "
    "bits per block weight in the QLoRA setup), qlora (peak of uniform NF4 QLoRA r=16), 80%% (of the "
    "16-bit LoRA r=16 peak)"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="autoqra",
        description="Search per-layer quantization bits and LoRA ranks under a peak-training-memory budget.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    est = sub.add_parser(
        "estimate",
        help="parameter counts and peak-training-memory breakdown of a plan",
        description="Predict the peak training memory of a plan (or a uniform format and rank) from "
        "the model's config alone. Sizes are binary: GiB = 2^30 bytes.",
    )
    est.add_argument("--model", help="alias (e.g. smollm2-135m, llama-3.1-8b), config.json, model folder "
                     "or hub id; default: the space's model")
    est.add_argument("--space", default="default", help="search-space YAML file or preset name (default: default)")
    est.add_argument("--plan", type=Path, help="plan JSON file (see docs/plan-format.md)")
    est.add_argument("--format", dest="fmt", choices=["hqq", "nf4", "int8", "bf16", "fp16", "fp32"],
                     help="uniform format for every block linear (default: hqq)")
    est.add_argument("--bits", type=int, help="bits of the uniform format (default: 4 for hqq)")
    est.add_argument("--group-size", type=int, help="HQQ group size / NF4 block size (default 64)")
    est.add_argument("--double-quant", action="store_true", help="NF4 with double-quantized absmax")
    est.add_argument("--rank", type=int, help="uniform LoRA rank, 0 = no adapter (default: 16)")
    est.add_argument("--batch-size", type=int, help="default: the space's training.batch_size")
    est.add_argument("--seq-len", type=int, help="default: the space's training.seq_len")
    est.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                     help="default: the space's training.grad_checkpointing")
    est.add_argument("--optimizer", choices=["adamw", "adamw8bit", "paged_adamw8bit"])
    est.add_argument("--compute-dtype", choices=["bf16", "fp16", "fp32"])
    est.add_argument("--budget", help=BUDGET_HELP)
    est.add_argument("--save-plan", type=Path, help="write the evaluated plan as JSON to this path")
    est.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "estimate":
            from autoqra.commands.estimate import run_estimate

            return run_estimate(args)
        raise AssertionError(f"unhandled command {args.command}")
    except AutoQRAError as exc:
        print(f"autoqra: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("autoqra: interrupted", file=sys.stderr)
        return 130
