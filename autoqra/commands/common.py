"""Turning shared arguments into request parts."""

from __future__ import annotations

import argparse

from autoqra.service.requests import PlanChoice


def plan_choice(args: argparse.Namespace) -> PlanChoice:
    """``--plan`` or the uniform ``--format/--bits/--group-size/--double-quant/--rank`` options."""
    return PlanChoice(plan_path=args.plan, format_name=args.fmt, bits=args.bits, group_size=args.group_size,
                      double_quant=args.double_quant, rank=args.rank)
