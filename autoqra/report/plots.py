"""The run's plots, drawn from a :class:`~autoqra.report.run.Run` (matplotlib, imported on use).

- ``front.png``: quality against predicted peak memory (MiB), one panel per fidelity; every trial
  faint, the ``high`` Pareto front joined, the budget as a vertical line, the uniform references marked.
- ``layers.png``: the chosen plan per layer group: stored format bits, LoRA rank, and the sensitivity
  prior the search started from.
- ``progress.png``: the best ``high`` quality within budget against the trial cost spent
  (high-trial units), the stages shaded.
- ``hypervolume.png``: hypervolume of the evolution stage per generation (strategy ``autoqra`` only).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoqra.search.stage import FINAL_FIDELITY, HIGH_FIDELITY, LOW_FIDELITY
from autoqra.space.reference import lora16_plan, qlora_plan

if TYPE_CHECKING:
    from autoqra.report.run import Run

MIB = 2**20
FIDELITY_STYLE = {LOW_FIDELITY: ("tab:gray", "o"), HIGH_FIDELITY: ("tab:blue", "o"), FINAL_FIDELITY: ("tab:green", "D")}
STAGE_COLORS = ("#e8f0fb", "#fdf0e0", "#e6f5e6", "#f3e8f7", "#f0f0f0")


def write_plots(run: Run, out_dir: Path) -> list[Path]:
    """Write every plot that the run has data for into ``out_dir``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_save(plot_front(run), out_dir / "front.png"), _save(plot_progress(run), out_dir / "progress.png")]
    if run.chosen is not None:
        written.append(_save(plot_layers(run), out_dir / "layers.png"))
    if run.outcome.hv_history:
        written.append(_save(plot_hypervolume(run), out_dir / "hypervolume.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _title(run: Run) -> str:
    s = run.settings
    return (f"{s['strategy']} on {s['task']}, {s['model']}, budget {s['budget']['text']} "
            f"({run.budget_bytes / MIB:.1f} MiB), seed {s['seed']}")


def _references(run: Run) -> list[tuple[str, int, str]]:
    """(label, predicted peak bytes, plan hash) of the uniform references: QLoRA NF4-DQ r16 and 16-bit LoRA r16."""
    spec, granularity = run.codec.spec, run.space.granularity
    plans = (("QLoRA NF4-DQ r16", qlora_plan(spec, granularity)),
             ("16-bit LoRA r16", lora16_plan(spec, run.space.training.compute_dtype, granularity)))
    return [(label, run.codec.memory.total(plan), plan.plan_hash) for label, plan in plans]


def _robust_floor(values: list[float]) -> float:
    """A lower y limit that keeps a few very bad trials from flattening the rest."""
    ordered = sorted(values)
    q1, q3 = ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]
    spread = max(q3 - q1, 1e-6)
    return max(ordered[0], q1 - 3 * spread)


def plot_front(run: Run) -> Any:
    import matplotlib.pyplot as plt

    trials = run.trials[run.trials["status"] == "ok"]
    fidelities = [f for f in (LOW_FIDELITY, HIGH_FIDELITY, FINAL_FIDELITY) if (trials["fidelity"] == f).any()]
    fig, axes = plt.subplots(1, max(1, len(fidelities)), figsize=(5.2 * max(1, len(fidelities)), 4.6), squeeze=False,
                             sharex=True)
    refs = _references(run)
    budget_mib = run.budget_bytes / MIB
    front = run.front
    chosen = run.chosen
    for ax, fidelity in zip(axes[0], fidelities or [HIGH_FIDELITY], strict=True):
        color, marker = FIDELITY_STYLE.get(fidelity, ("tab:purple", "o"))
        mine = trials[trials["fidelity"] == fidelity]
        x, y = mine["predicted_peak_bytes"] / MIB, mine["objective"]
        ax.scatter(x, y, s=22, alpha=0.35, color=color, marker=marker, label=f"{fidelity} trials ({len(mine)})")
        if fidelity == HIGH_FIDELITY and not front.empty:
            ax.plot(front["predicted_peak_bytes"] / MIB, front["objective"], "-o", color="black", lw=1.6, ms=5,
                    label=f"Pareto front ({len(front)})")
        if chosen is not None:
            same = mine[mine["plan_hash"] == chosen.row["plan_hash"]]
            if not same.empty:
                ax.scatter(same["predicted_peak_bytes"] / MIB, same["objective"], s=160, marker="*", color="gold",
                           edgecolor="black", zorder=5,
                           label="chosen plan" + ("" if chosen.by == fidelity else f" (chosen by {chosen.by})"))
        ax.axvline(budget_mib, color="tab:red", ls="--", lw=1.2,
                   label=f"budget {run.settings['budget']['text']} = {budget_mib:.1f} MiB")
        for label, peak, plan_hash in refs:
            ran = mine[mine["plan_hash"] == plan_hash]
            if not ran.empty:
                ax.scatter(ran["predicted_peak_bytes"] / MIB, ran["objective"], s=70, marker="s", facecolor="none",
                           edgecolor="tab:red", lw=1.5, zorder=4, label=label)
            elif label.startswith("QLoRA") and abs(peak - run.budget_bytes) > 0.002 * run.budget_bytes:
                ax.axvline(peak / MIB, color="tab:orange", ls=":", lw=1.2, label=f"{label} peak (not trained here)")
        if len(y):
            floor = _robust_floor(list(y))
            below = int((y < floor).sum())
            top = float(y.max())
            pad = 0.08 * max(top - floor, 1e-3)
            ax.set_ylim(floor - pad, top + pad)
            if below:
                ax.text(0.02, 0.02, f"{below} trial(s) below the axis", transform=ax.transAxes, fontsize=8,
                        color="dimgray")
        ax.set_title(f"{fidelity} fidelity", fontsize=10)
        ax.set_xlabel("predicted peak training memory (MiB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.6)
    axes[0][0].set_ylabel(_quality_label(run))
    fig.suptitle(_title(run), fontsize=10)
    fig.tight_layout()
    return fig


def _quality_label(run: Run) -> str:
    metric = str(run.trials["metric_name"].iloc[0]) if len(run.trials) else "eval_loss"
    return "objective = -held-out loss (higher is better)" if metric == "eval_loss" else \
        "objective = exact-match accuracy (higher is better)"


def plot_layers(run: Run) -> Any:
    import matplotlib.pyplot as plt

    layers = run.layers()
    chosen = run.chosen
    assert chosen is not None
    has_prior = not layers["sensitivity"].isna().all()
    rows = 3 if has_prior else 2
    width = min(16.0, max(7.0, 0.28 * len(layers)))
    fig, axes = plt.subplots(rows, 1, figsize=(width, 2.1 * rows + 0.8), sharex=True)
    x = list(range(len(layers)))
    formats = list(dict.fromkeys(layers["format"]))
    palette = plt.get_cmap("tab10")
    colors = [palette(formats.index(f) % 10) for f in layers["format"]]
    from matplotlib.patches import Patch

    axes[0].bar(x, layers["bits"], color=colors)
    axes[0].set_ylabel("nominal bits")
    axes[0].legend(handles=[Patch(color=palette(i % 10), label=fmt) for i, fmt in enumerate(formats)], fontsize=7,
                   ncol=min(6, len(formats)), loc="upper right", title="format", title_fontsize=7)
    axes[0].set_ylim(0, max(layers["bits"]) * 1.35)
    axes[1].bar(x, layers["rank"], color="tab:purple")
    axes[1].set_ylabel("LoRA rank")
    axes[1].set_ylim(0, max(1, max(layers["rank"])) * 1.2)
    if has_prior:
        axes[2].bar(x, layers["sensitivity"], color="tab:gray")
        assert run.priors is not None
        axes[2].set_ylabel(f"sensitivity\n(KL at {run.priors.lowest_format})")
    labels = [str(g).removeprefix("block.") for g in layers["group"]]
    step = max(1, len(labels) // 40)
    axes[-1].set_xticks(x[::step], labels[::step], rotation=90 if len(labels) > 40 else 0, fontsize=7)
    axes[-1].set_xlabel("transformer block" if run.space.granularity == "block" else "module")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    r = chosen.row
    fig.suptitle(f"chosen plan [{str(r['plan_hash'])[:8]}] (by its {chosen.by} result): {r['avg_bits']:.1f} bits, "
                 f"rank {r['avg_rank']:.1f}, {r['stored_bits']:.2f} stored bits/weight, "
                 f"{100 * r['budget_fraction']:.1f}% of the budget\n{_title(run)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_progress(run: Run) -> Any:
    import matplotlib.pyplot as plt

    costs: dict[str, float] = run.settings["fidelity_costs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    spent, best = 0.0, -math.inf
    xs: list[float] = []
    ys: list[float] = []
    spans: list[tuple[str, float, float]] = []
    for row in run.trials.itertuples():
        start = spent
        spent += costs.get(str(row.fidelity), 0.0)
        if spans and spans[-1][0] == row.stage:
            spans[-1] = (str(row.stage), spans[-1][1], spent)
        else:
            spans.append((str(row.stage), start, spent))
        if row.fidelity == HIGH_FIDELITY and row.status == "ok" and row.within_budget and row.objective > best:
            best = float(row.objective)
        if math.isfinite(best):
            xs.append(spent)
            ys.append(best)
    stage_names = list(dict.fromkeys(name for name, _, _ in spans))
    for name, start, end in spans:
        ax.axvspan(start, end, color=STAGE_COLORS[stage_names.index(name) % len(STAGE_COLORS)], lw=0)
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=STAGE_COLORS[i % len(STAGE_COLORS)], label=f"stage: {name}")
                          for i, name in enumerate(stage_names)]
    if xs:
        (line,) = ax.step(xs, ys, where="post", color="tab:blue", lw=2, label="best high result within budget")
        handles.append(line)
    else:
        ax.text(0.5, 0.5, "no high result within the budget yet", transform=ax.transAxes, ha="center")
    ax.set_xlim(0, max(spent, 1e-6))
    ax.set_xlabel("trial cost spent (high-trial units; a low trial counts its share of a high trial's tokens)")
    ax.set_ylabel("best objective at high\n(-held-out loss, higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set_title(_title(run), fontsize=10)
    fig.tight_layout()
    return fig


def plot_hypervolume(run: Run) -> Any:
    import matplotlib.pyplot as plt

    history = run.outcome.hv_history
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(range(len(history)), history, "-o", color="tab:blue")
    ax.set_xlabel("generation of the evolution stage")
    ax.set_xticks(range(len(history)))
    ref = run.outcome.hv_reference
    note = f" (reference: objective {ref[0]:.3f}, 100% of the budget)" if ref else ""
    ax.set_ylabel("hypervolume\n(objective x budget fraction)")
    ax.set_title(f"hypervolume of the high results within budget, after each generation{note}\n{_title(run)}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
