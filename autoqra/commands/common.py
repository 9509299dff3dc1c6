"""Arguments and resolution shared by commands: model, space, and a plan from a file or a uniform choice."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autoqra.domain import Plan, QuantFormat, first_error
from autoqra.errors import AutoQRAError, PlanError
from autoqra.space.model_spec import ModelSpec
from autoqra.space.search_space import SearchSpace, load_space, uniform_plan


def space_for(args: argparse.Namespace) -> SearchSpace:
    space = load_space(args.space)
    return space.with_model(args.model) if args.model else space


def plan_from_args(args: argparse.Namespace, space: SearchSpace, spec: ModelSpec) -> tuple[Plan, str]:
    """The plan named by ``--plan`` or built from the uniform options, and a label saying which."""
    uniform_args = (args.fmt, args.bits, args.rank, args.group_size)
    if args.plan is not None:
        if any(v is not None for v in uniform_args) or args.double_quant:
            raise PlanError("give either --plan or --format/--bits/--rank/--group-size, not both")
        try:
            text = args.plan.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(f"cannot read plan {args.plan}: {getattr(exc, 'strerror', None) or exc}") from None
        plan = Plan.from_json(text, source=str(args.plan))
        spec.check_plan(plan)
        return plan, str(args.plan)
    name = args.fmt or "hqq"
    fields: dict[str, Any] = {"name": name, "double_quant": args.double_quant}
    if args.bits is not None:
        fields["bits"] = args.bits
    elif name == "hqq":
        fields["bits"] = 4
    if args.group_size is not None:
        fields["group_size"] = args.group_size
    try:
        fmt = QuantFormat.model_validate(fields)
    except ValidationError as exc:
        raise PlanError(f"format: {first_error(exc)}") from None
    rank = 16 if args.rank is None else args.rank
    if not 0 <= rank <= 4096:
        raise PlanError(f"--rank must be in 0..4096, not {rank}")
    return uniform_plan(spec, fmt, rank, space.granularity), f"uniform {fmt.label} r={rank}"


def format_counts(plan: Plan) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fmt, rank in plan.module_choices().values():
        key = f"{fmt.label} r={rank}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def format_summary(plan: Plan) -> str:
    return ", ".join(f"{n} x {k}" for k, n in format_counts(plan).items())


def write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise AutoQRAError(f"cannot write {path}: {exc.strerror or exc}") from None
