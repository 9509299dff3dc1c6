"""``autoqra trial``: one real quantized-LoRA training run of a plan at a fidelity."""

from __future__ import annotations

import argparse
import sys

from autoqra.commands.common import format_summary, plan_from_args, space_for, write_text
from autoqra.domain import TrialResult, TrialStatus, derive_seed
from autoqra.errors import AutoQRAError, PlanError
from autoqra.space.budget import format_bytes
from autoqra.space.model_spec import model_spec


def run_trial(args: argparse.Namespace) -> int:
    from autoqra.trials.evaluator import Evaluator, EvaluatorConfig

    space = space_for(args)
    spec = model_spec(space.model)
    plan, plan_source = plan_from_args(args, space, spec)
    if args.fidelity not in space.fidelities:
        raise AutoQRAError(f"space {space.name} has no fidelity {args.fidelity!r} (has {', '.join(space.fidelities)})")
    fidelity = space.fidelities[args.fidelity]
    if not any(group.rank > 0 for group in plan.groups):
        raise PlanError("plan gives every module rank 0: there is nothing to train")
    training = space.training
    config = EvaluatorConfig(
        model=space.model, task=args.task or space.task, compute_dtype=training.compute_dtype, device=args.device,
        learning_rate=training.learning_rate, warmup_ratio=training.warmup_ratio,
        alpha_ratio=training.lora_alpha_ratio, init=args.init, grad_checkpointing=args.grad_checkpointing,
    )
    seed = derive_seed(args.seed, plan.plan_hash, fidelity.name)
    log = sys.stderr
    print(f"trial: model {space.model}, task {config.task}, fidelity {fidelity.name} ({fidelity.steps} steps x "
          f"batch {fidelity.batch_size} x seq {fidelity.seq_len}, {fidelity.eval_examples} eval examples), "
          f"{training.compute_dtype}, init {args.init}, seed {seed}", file=log, flush=True)
    print(f"plan: {plan_source}; {format_summary(plan)}", file=log, flush=True)
    evaluator = Evaluator(config)
    result = evaluator.evaluate(plan, fidelity, seed)
    if args.out:
        write_text(args.out, result.to_json() + "\n")
    if args.json:
        print(result.to_json())
    else:
        print_result(result)
    return 0 if result.status is TrialStatus.OK else 1


def print_result(r: TrialResult) -> None:
    m = r.metrics
    print(f"status      {r.status.value}" + (f" ({r.error})" if r.error else ""))
    if r.objective is not None:
        print(f"objective   {r.objective:.4f} ({'accuracy' if r.metric_name == 'accuracy' else '-eval_loss'};"
              " higher is better)")
    if m.eval_loss is not None:
        print(f"held-out    loss {m.eval_loss:.4f} (perplexity {m.perplexity:.2f}); before training "
              f"{m.initial_eval_loss:.4f}" + (f"; accuracy {m.accuracy:.3f}" if m.accuracy is not None else ""))
    if m.probe_train_loss_after is not None:
        print(f"train loss  {m.probe_train_loss_before:.4f} -> {m.probe_train_loss_after:.4f} on a fixed training "
              f"batch; {len(r.train_losses)} steps, last step {r.train_losses[-1]:.4f}")
    measured = (f"measured peak {format_bytes(r.measured_peak_bytes)}" if r.measured_peak_bytes is not None
                else f"process peak RSS {format_bytes(r.peak_rss_bytes or 0)}")
    print(f"memory      predicted peak {format_bytes(r.predicted_peak_bytes)}; measured static "
          f"{format_bytes(r.measured_static_bytes)} (weights, adapters, grads, optimizer); {measured}")
    p = r.phases
    print(f"phases      load {p.load_s:.1f} s, build {p.build_s:.1f} s, train {p.train_s:.1f} s, "
          f"eval {p.eval_s:.1f} s on {r.device}")
