"""``autoqra estimate``: parameter counts and the peak-memory breakdown of one plan."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autoqra.domain import Plan, QuantFormat, first_error
from autoqra.errors import AutoQRAError, PlanError
from autoqra.space.budget import format_bytes, parse_budget, resolve
from autoqra.space.formats import DTYPE_BYTES, weight_storage_bytes
from autoqra.space.memory import MemoryBreakdown, MemoryModel, TrainingSetup
from autoqra.space.model_spec import ModelSpec, model_spec
from autoqra.space.search_space import SearchSpace, load_space, uniform_plan

_ROWS = (
    ("quantized_weights", "quantized block weights"),
    ("unquantized", "unquantized tensors"),
    ("lora_params", "LoRA parameters"),
    ("lora_grads", "LoRA gradients"),
    ("optimizer_states", "optimizer states"),
    ("activations", "activations"),
    ("logits", "logits + loss"),
    ("workspace", "dequant + backward workspace"),
    ("framework", "framework constant"),
)


def run_estimate(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    if args.model:
        space = space.with_model(args.model)
    spec = model_spec(space.model)
    setup = _setup(space, args)
    plan, plan_source = _plan(args, space, spec)
    spec.check_plan(plan)
    memory = MemoryModel(spec, setup)
    breakdown = memory.estimate(plan)
    budget = resolve(parse_budget(args.budget), memory) if args.budget else None
    bits = stored_bits_per_weight(plan, spec, setup)
    if args.save_plan:
        _write(args.save_plan, plan.to_json() + "\n")

    if args.json:
        out: dict[str, Any] = {
            "model": spec.to_dict(),
            "space": space.name,
            "training": dataclasses.asdict(setup),
            "plan": {"source": plan_source, "hash": plan.plan_hash, "groups": len(plan.groups),
                     "stored_bits_per_weight": round(bits, 4), "formats": _format_counts(plan)},
            "memory": breakdown.as_dict(),
        }
        if budget is not None:
            out["budget"] = {"text": budget.budget.text, "kind": budget.budget.kind, "bytes": budget.bytes,
                             "fits": breakdown.total <= budget.bytes, "explanation": budget.explanation}
        print(json.dumps(out, indent=2))
        return 0

    _print_model(spec)
    print(f"space       {space.name}; granularity {space.granularity}")
    ckpt = "with" if setup.grad_checkpointing else "without"
    print(f"training    batch {setup.batch_size} x seq {setup.seq_len}, {setup.compute_dtype} compute, "
          f"{setup.optimizer}, {ckpt} gradient checkpointing")
    print(f"plan        {plan_source}; {len(plan.groups)} groups; {_format_summary(plan)}")
    print(f"            {bits:.2f} stored bits per block weight (metadata included); hash {plan.plan_hash}")
    print()
    _print_breakdown(breakdown)
    if budget is not None:
        print()
        print(f"budget      {budget.explanation} ({format_bytes(budget.bytes)})")
        slack = budget.bytes - breakdown.total
        verdict = "fits" if slack >= 0 else "does NOT fit"
        print(f"            plan {verdict}: uses {breakdown.total / budget.bytes:.1%} of the budget "
              f"({format_bytes(abs(slack))} {'left' if slack >= 0 else 'over'})")
    return 0


def stored_bits_per_weight(plan: Plan, spec: ModelSpec, setup: TrainingSetup) -> float:
    """Average stored bits per block-linear weight, quantization metadata included."""
    compute = DTYPE_BYTES[setup.compute_dtype]
    total = 0
    for name, (fmt, _rank) in plan.module_choices().items():
        lin = spec.linear(name)
        total += weight_storage_bytes(fmt, lin.out_features, lin.in_features, compute)
    return 8 * total / spec.params.block_linear_weights


def _setup(space: SearchSpace, args: argparse.Namespace) -> TrainingSetup:
    base = space.setup
    overrides = {
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "grad_checkpointing": args.grad_checkpointing,
        "optimizer": args.optimizer,
        "compute_dtype": args.compute_dtype,
    }
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _plan(args: argparse.Namespace, space: SearchSpace, spec: ModelSpec) -> tuple[Plan, str]:
    uniform_args = (args.fmt, args.bits, args.rank, args.group_size)
    if args.plan is not None:
        if any(v is not None for v in uniform_args) or args.double_quant:
            raise PlanError("give either --plan or --format/--bits/--rank/--group-size, not both")
        try:
            text = args.plan.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(f"cannot read plan {args.plan}: {exc.strerror or exc}") from None
        return Plan.from_json(text, source=str(args.plan)), str(args.plan)
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


def _format_counts(plan: Plan) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fmt, rank in plan.module_choices().values():
        key = f"{fmt.label} r={rank}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _format_summary(plan: Plan) -> str:
    return ", ".join(f"{n} x {k}" for k, n in _format_counts(plan).items())


def _print_model(spec: ModelSpec) -> None:
    p = spec.params
    head = "LM head tied" if spec.tie_word_embeddings else f"LM head {p.lm_head:,}"
    print(f"model       {spec.name}: {spec.architecture}, {spec.num_blocks} blocks, "
          f"{len(spec.linears)} block linears, hidden {spec.hidden_size}, vocab {spec.vocab_size:,}")
    print(f"parameters  {p.total:,} total = {p.block_linear_weights:,} block linear weights"
          f" + {p.block_linear_biases:,} biases + {p.embeddings:,} embeddings ({head})"
          f" + {p.norms:,} norms + {p.other:,} other")


def _print_breakdown(b: MemoryBreakdown) -> None:
    print("peak training memory (binary units: GiB = 2^30 bytes)")
    for key, label in _ROWS:
        value = getattr(b, key)
        share = value / b.total if b.total else 0.0
        print(f"  {label:<30} {format_bytes(value):>12} {share:>7.1%}")
    print(f"  {'static (resident)':<30} {format_bytes(b.static):>12}")
    print(f"  {'total peak':<30} {format_bytes(b.total):>12}   ({b.total:,} bytes)")


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise AutoQRAError(f"cannot write {path}: {exc.strerror or exc}") from None
