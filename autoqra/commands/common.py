"""Turning shared arguments into request parts, and writing files from a command."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoqra.errors import AutoQRAError
from autoqra.service.requests import PlanChoice


def plan_choice(args: argparse.Namespace) -> PlanChoice:
    """``--plan`` or the uniform ``--format/--bits/--group-size/--double-quant/--rank`` options."""
    return PlanChoice(plan_path=args.plan, format_name=args.fmt, bits=args.bits, group_size=args.group_size,
                      double_quant=args.double_quant, rank=args.rank)


def write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise AutoQRAError(f"cannot write {path}: {exc.strerror or exc}") from None
