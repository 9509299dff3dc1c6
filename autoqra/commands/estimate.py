"""``autoqra estimate``: parameter counts and the peak-memory breakdown of one plan."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from autoqra.commands.common import plan_choice
from autoqra.domain import Plan
from autoqra.service.requests import check_output_file, resolve_space, write_output
from autoqra.service.trial import plan_counts, plan_summary
from autoqra.space.budget import ResolvedBudget, format_bytes, parse_budget, resolve
from autoqra.space.formats import DTYPE_BYTES, weight_storage_bytes
from autoqra.space.memory import MemoryBreakdown, MemoryModel, TrainingSetup
from autoqra.space.model_spec import ModelSpec
from autoqra.space.search_space import SearchSpace

_ROWS = (
    ("quantized_weights", "quantized block weights"),
    ("unquantized", "unquantized tensors"),
    ("lora_params", "LoRA parameters"),
    ("lora_grads", "LoRA gradients"),
    ("optimizer_states", "optimizer states"),
    ("framework", "framework constant"),
    ("activations", "activations"),
)
# the two phases of the backward pass: only the larger one is part of the peak
_PHASES = {
    "logits": (("logits", "logits + loss"),),
    "blocks": (("recompute", "recomputed block"), ("workspace", "dequant + backward workspace")),
}


def run_estimate(args: argparse.Namespace) -> int:
    space, spec = resolve_space(args.space, args.model)
    setup = _setup(space, args)
    plan, plan_source = plan_choice(args).resolve(space, spec)
    memory = MemoryModel(spec, setup)
    breakdown = memory.estimate(plan)
    # an empty --budget '' is a bad budget, not a missing one
    budget = resolve(parse_budget(args.budget), memory) if args.budget is not None else None
    if args.save_plan:
        check_output_file(args.save_plan, "--save-plan")
        write_output(args.save_plan, plan.to_json() + "\n")
    bits = stored_bits_per_weight(plan, spec, setup)
    if args.json:
        _print_json(space, spec, setup, plan, plan_source, bits, breakdown, budget)
        return 0
    _print_model(spec)
    print(f"space       {space.name}; granularity {space.granularity}")
    ckpt = "with" if setup.grad_checkpointing else "without"
    print(f"training    batch {setup.batch_size} x seq {setup.seq_len}, {setup.compute_dtype} compute, "
          f"{setup.optimizer}, {ckpt} gradient checkpointing")
    print(f"plan        {plan_source}; {len(plan.groups)} groups; {plan_summary(plan)}")
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


def _print_json(space: SearchSpace, spec: ModelSpec, setup: TrainingSetup, plan: Plan, plan_source: str, bits: float,
                breakdown: MemoryBreakdown, budget: ResolvedBudget | None) -> None:
    out: dict[str, Any] = {
        "model": spec.to_dict(),
        "space": space.name,
        "training": dataclasses.asdict(setup),
        "plan": {"source": plan_source, "hash": plan.plan_hash, "groups": len(plan.groups),
                 "stored_bits_per_weight": round(bits, 4), "formats": plan_counts(plan)},
        "memory": breakdown.as_dict(),
    }
    if budget is not None:
        out["budget"] = {"text": budget.budget.text, "kind": budget.budget.kind, "bytes": budget.bytes,
                         "fits": breakdown.total <= budget.bytes, "explanation": budget.explanation}
    print(json.dumps(out, indent=2))


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
        _print_row(label, getattr(b, key), b.total)
    for phase, rows in _PHASES.items():
        at_peak = phase == b.peak_phase
        print(f"  backward, {phase} phase" + ("  <- the peak" if at_peak else "  (smaller: not in the total)"))
        for key, label in rows:
            _print_row(label, getattr(b, key), b.total if at_peak else 0, indent=4)
    print(f"  {'static (resident)':<30} {format_bytes(b.static):>12}")
    print(f"  {'total peak':<30} {format_bytes(b.total):>12}   ({b.total:,} bytes)")


def _print_row(label: str, value: int, total: int, indent: int = 2) -> None:
    share = f"{value / total:>7.1%}" if total else ""
    print(f"{' ' * indent}{label:<{32 - indent}} {format_bytes(value):>12} {share}")
