"""Does the prior utility trade bits against rank as measured training does? Checked on the fidelity study.

The prior utility (``autoqra/search/utility.py``) orders repair moves, builds the priors-driven plan of
the warm start and steers mutation. This script scores the fidelity study's plans (the frozen set in
``experiments/results/fidelity/plans.<space>.json``, all under the ``qlora`` budget) with the utility
for a range of adapter weights and prints, per weight, Spearman rho between utility and the measured
``final`` objective, and the pairs of plans whose order the utility gets wrong. No training: it reads
the study's cells and the cached priors (measured once, ~1 min, if absent).

    .venv/bin/python experiments/utility_check.py
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default")
    parser.add_argument("--cells", type=Path, default=ROOT / "experiments" / "results" / "fidelity")
    args = parser.parse_args()

    import numpy as np
    from scipy.stats import spearmanr

    from autoqra.domain import Plan
    from autoqra.search.codec import SearchCodec
    from autoqra.search.settings import preset
    from autoqra.search.utility import ADAPTER_WEIGHT, utility_from_priors
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import load_space
    from autoqra.trials.importance import cached_space_priors

    space = load_space(args.space)
    spec = model_spec(space.model)
    codec = SearchCodec(spec, space)
    p = preset("quick").priors
    priors, _, _ = cached_space_priors(model=space.model, granularity=space.granularity,
                                       lowest=space.ladder(spec)[0], compute_dtype=space.training.compute_dtype,
                                       task=space.task, calibration=p.calibration, seq_len=p.seq_len,
                                       demand_batches=p.demand_batches, seed=0)
    frozen = json.loads((args.cells / f"plans.{args.space}.json").read_text())
    final = space.fidelities["final"]
    key = f"final-{final.steps}x{final.batch_size}x{final.seq_len}e{final.eval_examples}a{final.grad_accum}"
    rows = []
    for row in frozen:
        plan = Plan.from_dict(row["plan"])
        cell = args.cells / f"{row['label']}.{plan.plan_hash[:8]}.{key}.s0.json"
        if not cell.is_file():
            continue
        try:
            genome = codec.encode(plan)
        except Exception:  # noqa: BLE001 - NF4 (QLoRA) lies outside an HQQ-only space: no utility to score
            print(f"  ({row['label']}: outside the space, not scored)")
            continue
        rows.append((row["label"], genome, json.loads(cell.read_text())["objective"]))
    measured = np.array([r[2] for r in rows])
    print(f"{len(rows)} plans with a `final` result ({key}); utility vs measured final objective")
    print(f"{'adapter weight':>14}  {'Spearman':>8}  {'pairs wrong':>11}  worst inversion (measured gap)")
    for weight in sorted({*WEIGHTS, ADAPTER_WEIGHT}):
        utility = utility_from_priors(codec, priors, adapter_weight=weight)
        scores = np.array([utility.of(g) for _, g, _ in rows])
        rho = spearmanr(scores, measured).statistic
        wrong = [(measured[i] - measured[j], rows[i][0], rows[j][0]) for i in range(len(rows))
                 for j in range(len(rows)) if measured[i] > measured[j] and scores[i] < scores[j]]
        worst = max(wrong, default=None)
        text = f"{worst[1]} > {worst[2]} ({worst[0]:.3f} nats)" if worst else "-"
        mark = "  (current)" if weight == ADAPTER_WEIGHT else ""
        print(f"{weight:>14g}  {rho:>8.3f}  {len(wrong):>5}/{len(rows) * (len(rows) - 1) // 2:<5}  {text}{mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
