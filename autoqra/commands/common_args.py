"""Argument definitions shared by commands; argparse only, so that ``--help`` stays light."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="alias (e.g. smollm2-135m, llama-3.1-8b), config.json, model folder "
                        "or hub id; default: the space's model")
    parser.add_argument("--space", default="default", help="search-space YAML file or preset name (default: default)")


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--plan", type=Path, help="plan JSON file (see docs/plan-format.md)")
    parser.add_argument("--format", dest="fmt", choices=["hqq", "nf4", "int8", "bf16", "fp16", "fp32"],
                        help="uniform format for every block linear (default: hqq)")
    parser.add_argument("--bits", type=int, help="bits of the uniform format (default: 4 for hqq)")
    parser.add_argument("--group-size", type=int, help="HQQ group size / NF4 block size (default 64)")
    parser.add_argument("--double-quant", action="store_true", help="NF4 with double-quantized absmax")
    parser.add_argument("--rank", type=int, help="uniform LoRA rank, 0 = no adapter (default: 16)")
