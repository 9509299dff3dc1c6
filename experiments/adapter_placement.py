"""Where should the adapters go at 8 bits? Concentrated adapters against rank 4 everywhere, at `final`.

At ``qlora`` on ``news`` the best plan found by every search is uniform HQQ-8 g64 r4 (``sequential``'s,
docs/results.md), 74% of the QLoRA -> 16-bit LoRA gap. With HQQ-8 everywhere, a block's adapter memory
(parameters, gradients, AdamW states) grows with its rank, so the same memory can sit as rank 4 on all
30 blocks or as rank 8 on 15 of them or rank 16 on a few. The searches never settled whether that pays:
at 85% of ``qlora`` Optuna's best plans put rank 4 on the last 16 blocks only, while the demand prior
(``python -m autoqra priors``) ranks early blocks highest. This trains such plans at `final` with the
comparison's trial seeds (1 and 2, the cells shared with ``experiments/compare.py``'s ``finals/``
folder) and prints each one paired against HQQ-8 r4 at the same seed.

Plans (HQQ-8 g64 on every block; each must fit the budget by the memory model):
- ``late-r8``: rank 8 on the last 15 blocks, none below;
- ``early-r8``: rank 8 on the first 15 blocks;
- ``demand-r8``: rank 8 on the 15 blocks with the largest demand prior (the quick preset's priors);
- ``late-r16``: rank 16 on as many of the last blocks as fit.

    python experiments/adapter_placement.py [--plans late-r8 early-r8 ...] [--seeds 1 2] [--report-only]

Resumable: a cell that exists is not retrained. About 5.7 min per `final` trial on a 2-core fp32 CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (the comparison's cells, seeds and evaluator; this script shares its `finals/`)

PLANS = ("late-r8", "early-r8", "demand-r8", "late-r16")
BASELINE = "hqq8-r4"
TASK, BUDGET = "news", "qlora"


def build_plans(setup: compare.Setup) -> dict[str, Any]:
    from autoqra.domain import Plan, PlanGroup, QuantFormat
    from autoqra.space.memory import MemoryModel
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import load_space

    space = load_space(setup.space)
    spec = model_spec(space.model)
    memory = MemoryModel(spec, space.setup)
    budget = compare.budget_bytes(setup, BUDGET)
    hqq8 = QuantFormat(name="hqq", bits=8, group_size=64)
    groups = spec.block_groups()
    n = len(groups)

    def plan(ranks: dict[int, int]) -> Any:
        return Plan(model=spec.name, granularity="block", groups=tuple(
            PlanGroup(name=name, modules=modules, format=hqq8, rank=ranks.get(i, 0))
            for i, (name, modules) in enumerate(groups)))

    demand = demand_order(setup, n)
    plans = {
        BASELINE: plan({i: 4 for i in range(n)}),
        "late-r8": plan({i: 8 for i in range(n - n // 2, n)}),
        "early-r8": plan({i: 8 for i in range(n // 2)}),
        "demand-r8": plan({i: 8 for i in demand[: n // 2]}),
    }
    k = max(k for k in range(n + 1) if memory.total(plan({i: 16 for i in range(n - k, n)})) <= budget)
    plans["late-r16"] = plan({i: 16 for i in range(n - k, n)})
    for name, p in plans.items():
        peak = memory.total(p)
        if peak > budget:
            raise SystemExit(f"adapter_placement: {name} needs {peak} bytes, over the budget's {budget}")
    return plans


def demand_order(setup: compare.Setup, n: int) -> list[int]:
    """Block indices by the demand prior, largest first, from the quick preset's priors (cached)."""
    from autoqra.search.settings import preset
    from autoqra.service.requests import lowest_quantized
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import load_space
    from autoqra.trials.importance import cached_space_priors

    space = load_space(setup.space)
    settings = preset("quick").priors  # what the quick search measured (and cached) on this space
    priors, _, _ = cached_space_priors(
        model=space.model, granularity=space.granularity, lowest=lowest_quantized(space, model_spec(space.model)),
        compute_dtype=space.training.compute_dtype, task=TASK, calibration=settings.calibration,
        seq_len=settings.seq_len, demand_batches=settings.demand_batches, seed=0)
    demand = [g.demand for g in priors.groups]
    return sorted(range(n), key=lambda i: -demand[i])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", nargs="+", choices=PLANS, default=list(PLANS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(compare.FINAL_SEEDS),
                        help="`final` trial seeds (default: the comparison's, 1 2)")
    parser.add_argument("--report-only", action="store_true", help="print the table from the cells only")
    parser.add_argument("--out", type=Path, default=compare.ROOT / "experiments" / "results" / "compare")
    args = parser.parse_args()
    from autoqra.cli import configure_logging, quiet_libraries

    configure_logging(verbose=False, quiet=False)
    quiet_libraries("search", verbose=False)
    out = args.out.resolve()
    setup = compare.Setup(space="default", out=out, runs=out / "runs", max_trials=None, methods=(), references=(),
                          final_seeds=tuple(args.seeds), grids=(), device="cpu")
    plans = build_plans(setup)
    finals = compare.Finals(setup)
    if not args.report_only:
        for seed in args.seeds:  # one seed of every plan first: a first answer for all of them sooner
            one = compare.Finals(compare.Setup(**{**setup.__dict__, "final_seeds": (seed,)}))
            for name in [BASELINE, *args.plans]:
                one.get(TASK, plans[name])
    print_table(setup, finals, plans, [BASELINE, *args.plans], args.seeds)
    return 0


def print_table(setup: compare.Setup, finals: compare.Finals, plans: dict[str, Any], names: list[str],
                seeds: list[int]) -> None:
    from autoqra.space.memory import MemoryModel
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import load_space

    space = load_space(setup.space)
    memory = MemoryModel(model_spec(space.model), space.setup)
    budget = compare.budget_bytes(setup, BUDGET)

    def values(plan: Any) -> dict[int, float]:
        got = {}
        for seed in seeds:
            path = finals.path(TASK, plan.plan_hash, "default", seed)
            if path.is_file():
                got[seed] = json.loads(path.read_text())["objective"]
        return got

    base = values(plans[BASELINE])
    print(f"{TASK} at {BUDGET} ({budget / 2**20:.1f} MiB); `final` seeds {' '.join(map(str, seeds))}; "
          f"objective = -held-out loss, higher is better")
    print(f"{'plan':10} {'hash':8} {'adapters':>22} {'peak':>7} {'budget':>6} "
          + " ".join(f"{'s' + str(s):>8}" for s in seeds) + f" {'vs ' + BASELINE + ', paired':>22}")
    for name in names:
        plan = plans[name]
        got = values(plan)
        adapted = [i for i, g in enumerate(plan.groups) if g.rank > 0]
        ranks = sorted({g.rank for g in plan.groups if g.rank > 0})
        where = f"r{'/'.join(map(str, ranks))} on {len(adapted)} ({adapted[0]}-{adapted[-1]})" if adapted else "none"
        peak = memory.total(plan)
        diffs = [got[s] - base[s] for s in seeds if s in got and s in base]
        pair = "-" if name == BASELINE or not diffs else (
            f"{statistics.mean(diffs):+.4f}" + (f" ± {statistics.stdev(diffs):.4f}" if len(diffs) > 1 else "")
            + f" ({' / '.join(f'{d:+.4f}' for d in diffs)})")
        cols = " ".join(f"{got[s]:8.4f}" if s in got else f"{'-':>8}" for s in seeds)
        print(f"{name:10} {plan.plan_hash[:8]} {where:>22} {peak / 2**20:6.1f}M {peak / budget:6.1%} {cols} {pair:>22}")


if __name__ == "__main__":
    raise SystemExit(main())
