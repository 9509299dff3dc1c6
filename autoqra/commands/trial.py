"""``autoqra trial``: one real quantized-LoRA training run of a plan at a fidelity."""

from __future__ import annotations

import argparse

from autoqra.commands.common import plan_choice
from autoqra.domain import TrialResult, TrialStatus
from autoqra.service.requests import TrialRequest
from autoqra.service.trial import prepare_trial, run_trial
from autoqra.space.budget import format_bytes


def run_trial_command(args: argparse.Namespace) -> int:
    request = TrialRequest(plan=plan_choice(args), model=args.model, space=args.space, task=args.task,
                           fidelity=args.fidelity, init=args.init, seed=args.seed, device=args.device,
                           grad_checkpointing=args.grad_checkpointing, out=args.out)
    result = run_trial(prepare_trial(request))  # every bad input fails in prepare, before any output
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
