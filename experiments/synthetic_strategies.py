"""Every strategy on the synthetic problem with a known optimum (no training; ~2 minutes on 2 cores).

Prints, per strategy over 5 seeds: the best plan's gap to the exact optimum, and how many high
trials it took to get within 1% of the optimum (">N" = not within the trial budget of N units).
The same problem backs tests/unit/test_search_synthetic.py.

    .venv/bin/python experiments/synthetic_strategies.py [--max-trials 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from autoqra.executors.inline import InlineExecutor
    from autoqra.search.pipeline import RunConfig, SearchPipeline
    from autoqra.search.settings import PRESETS, STRATEGIES
    from autoqra.search.synthetic import tiny_problem

    parser = argparse.ArgumentParser()
    parser.add_argument("--max-trials", type=float, default=40.0)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    p = tiny_problem()
    fidelities = dict(p.codec.space.fidelities)
    preset = dataclasses.replace(PRESETS["quick"], max_cost=args.max_trials)
    print(f"synthetic problem: {p.codec.n_groups} blocks x {p.codec.n_formats} formats x {p.codec.n_ranks} ranks, "
          f"budget {p.budget_bytes:,} bytes, exact optimum {p.optimum:.5f}; trial budget {args.max_trials:g} units")
    print(f"{'strategy':<14} {'mean gap %':>10} {'worst gap %':>11}  high trials to within 1% (per seed)")
    for strategy in STRATEGIES:
        gaps, hits = [], []
        started = time.perf_counter()
        for seed in range(args.seeds):
            outcome = SearchPipeline(codec=p.codec, utility=p.utility, runner=InlineExecutor(p.evaluator, fidelities),
                                     fidelities=fidelities,
                                     config=RunConfig(strategy, preset, p.budget_bytes, seed)).run()
            gaps.append(100 * (p.optimum - outcome.chosen.objective) / abs(p.optimum))
            highs = [e for e in outcome.archive.items if e.ask.fidelity == "high"]
            hit = next((i + 1 for i, e in enumerate(highs) if e.objective >= p.optimum - 0.01 * abs(p.optimum)), None)
            hits.append(str(hit) if hit else f">{len(highs)}")
        print(f"{strategy:<14} {sum(gaps) / len(gaps):>10.3f} {max(gaps):>11.3f}  {' '.join(hits)}"
              f"   ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
