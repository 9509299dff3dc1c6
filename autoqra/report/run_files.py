"""The run directory's result files and the end-of-run report.

``plan.json``     the chosen plan: the best ``final`` result of the final selection (the best plans at
                  ``high`` retrained at ``final``), else the best ``high`` result, within the budget
``front.json``    the Pareto front of ``high`` results (quality up, predicted peak down) within budget
``summary.json``  counts, cost, time, why it stopped, hypervolume per generation, low/high Spearman
(``settings.json``, ``priors.json``, ``trials.db`` and ``trials.jsonl`` are written as the run goes.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoqra.domain import Plan
from autoqra.search.pipeline import RunOutcome, plan_brief
from autoqra.search.stage import FINAL_FIDELITY, HIGH_FIDELITY, LOW_FIDELITY, Evaluated
from autoqra.space.budget import format_bytes


def _point(e: Evaluated, budget_bytes: int) -> dict[str, Any]:
    r = e.result
    return {
        "plan_hash": e.ask.plan.plan_hash, "objective": e.objective, "metric_name": r.metric_name,
        "eval_loss": r.metrics.eval_loss, "accuracy": r.metrics.accuracy, "predicted_peak_bytes": e.predicted_peak_bytes,
        "budget_fraction": e.predicted_peak_bytes / budget_bytes, "stage": e.stage, "brief": plan_brief(e.ask.plan),
        "plan": e.ask.plan.to_dict(),
    }


def write_run_files(run_dir: Path, outcome: RunOutcome,
                    budget_bytes: int) -> tuple[list[str], dict[str, Any]]:
    """Write plan.json, front.json and summary.json; returns the names written and the summary."""
    written = []
    if outcome.chosen is not None:
        (run_dir / "plan.json").write_text(outcome.chosen.ask.plan.to_json() + "\n")
        written.append("plan.json")
    (run_dir / "front.json").write_text(json.dumps([_point(e, budget_bytes) for e in outcome.front], indent=2) + "\n")
    summary = {
        "stopped_by": outcome.stopped_by, "elapsed_s": outcome.elapsed_s, "cost_spent_high_units": outcome.spent,
        "trials": {f: outcome.count(f) for f in (LOW_FIDELITY, HIGH_FIDELITY, FINAL_FIDELITY)},
        "chosen_by": outcome.chosen_by,
        "final_selection": [{**_point(e, budget_bytes), "high_objective": _high_of(outcome, e)}
                            for e in outcome.archive.at(FINAL_FIDELITY)],
        "failed_trials": sum(1 for e in outcome.archive.items if not e.ok),
        "budget_bytes": budget_bytes,
        "chosen": _point(outcome.chosen, budget_bytes) if outcome.chosen else None,
        "hypervolume_per_generation": outcome.hv_history, "hypervolume_reference": outcome.hv_reference,
        "spearman_low_high_promoted": outcome.spearman_low_high, "promoted_pairs": outcome.promoted_pairs,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return [*written, "front.json", "summary.json"], summary


def _high_of(outcome: RunOutcome, e: Evaluated) -> float | None:
    highs = [h.objective for h in outcome.archive.at(HIGH_FIDELITY) if h.ask.plan == e.ask.plan]
    return highs[-1] if highs else None


def plan_table(plan: Plan) -> list[str]:
    """Per-group choices, several groups a line."""
    cells = [f"{g.name}: {g.format.label} r={g.rank}" for g in plan.groups]
    width = max(len(c) for c in cells) + 2
    per_line = max(1, 100 // width)
    return ["  " + "".join(c.ljust(width) for c in cells[i:i + per_line]).rstrip()
            for i in range(0, len(cells), per_line)]


def report_lines(outcome: RunOutcome, budget_bytes: int) -> list[str]:
    finals = outcome.count(FINAL_FIDELITY)
    lines = [f"search ended ({outcome.stopped_by}) after {outcome.elapsed_s / 60:.1f} min: "
             f"{outcome.count(LOW_FIDELITY)} low + {outcome.count(HIGH_FIDELITY)} high"
             + (f" + {finals} final" if finals else "") + f" trials, cost {outcome.spent:.2f} high-trial units"]
    chosen = outcome.chosen
    if chosen is None:
        lines.append("no high-fidelity trial ended ok within the budget: no plan chosen")
    else:
        r = chosen.result
        metric = (f"eval loss {r.metrics.eval_loss:.4f}" if r.metric_name == "eval_loss"
                  else f"accuracy {r.metrics.accuracy:.4f}")
        if finals:
            lines.append(f"final selection: {finals} plan(s) retrained at final (objective at high -> at final):")
            for e in outcome.archive.at(FINAL_FIDELITY):
                high = _high_of(outcome, e)
                final = f"{e.objective:.4f}" if e.ok else e.result.status.value
                lines.append(f"  {high if high is None else f'{high:.4f}'} -> {final}  {plan_brief(e.ask.plan)}"
                             + ("  <- chosen" if e is chosen else ""))
        lines.append(f"chosen plan (by its {outcome.chosen_by} result): objective {chosen.objective:.4f} ({metric}), predicted peak "
                     f"{format_bytes(chosen.predicted_peak_bytes)} = {100 * chosen.predicted_peak_bytes / budget_bytes:.1f}% of the budget "
                     f"({format_bytes(budget_bytes)}); {plan_brief(chosen.ask.plan)}")
        lines += plan_table(chosen.ask.plan)
    if outcome.front:
        lines.append("Pareto front (high fidelity, within budget; quality up, memory down):")
        lines.append(f"  {'objective':>10}  {'peak':>11}  {'budget':>6}  {'stage':<13} plan")
        for e in outcome.front:
            lines.append(f"  {e.objective:>10.4f}  {format_bytes(e.predicted_peak_bytes):>11}  "
                         f"{100 * e.predicted_peak_bytes / budget_bytes:>5.1f}%  {e.stage:<13} {plan_brief(e.ask.plan)}")
    if outcome.spearman_low_high is not None:
        lines.append(f"low -> high Spearman correlation over {outcome.promoted_pairs} promoted plans: "
                     f"{outcome.spearman_low_high:.3f}")
    if outcome.hv_history:
        ref = outcome.hv_reference
        lines.append("hypervolume per generation: " + ", ".join(f"{v:.4g}" for v in outcome.hv_history)
                     + (f" (objective x budget fraction; reference: objective {ref[0]:.4f}, 100% of the budget)"
                        if ref else ""))
    return lines
