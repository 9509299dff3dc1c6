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

``--budget 85%qlora`` asks the same at 85% of ``qlora``, where rank 4 everywhere fits at no bit-width of 4
or more, with HQQ-4 g64 on every block, paired against the plans ``autoqra`` and Optuna TPE chose there
(the comparison's secondary grid, seed 0; TPE's puts rank 4 on 16 blocks, most of them late), and
against ``autoqra``'s choice at commit a343ad4 (b42e2068), before its warm start placed adapters:
- ``demand-r4``: rank 4 on as many blocks as fit, those of largest demand prior;
- ``late-r4``: rank 4 on as many of the last blocks.

    python experiments/adapter_placement.py [--budget qlora|85%qlora] [--plans ...] [--seeds 1 2] [--report-only]

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

PLANS = {"qlora": ("late-r8", "early-r8", "demand-r8", "late-r16"), "85%qlora": ("demand-r4", "late-r4")}
# what each budget's plans are paired against: a plan of this script, or a method's chosen plan (its cell)
BASELINES = {"qlora": ("hqq8-r4",), "85%qlora": ("autoqra-a343ad4", "optuna-tpe", "autoqra")}
# plans a comparison cell held when this was measured, since replaced there: read back from their `final` cells
PINNED = {"autoqra-a343ad4": "b42e2068845c"}  # autoqra's 85% choice before the warm start placed adapters
TASK = "news"


def build_plans(setup: compare.Setup, budget_name: str) -> dict[str, Any]:
    from autoqra.domain import Plan, PlanGroup, QuantFormat
    from autoqra.space.memory import MemoryModel
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import load_space

    space = load_space(setup.space)
    spec = model_spec(space.model)
    memory = MemoryModel(spec, space.setup)
    budget = compare.budget_bytes(setup, budget_name)
    hqq4 = QuantFormat(name="hqq", bits=4, group_size=64)
    hqq8 = QuantFormat(name="hqq", bits=8, group_size=64)
    groups = spec.block_groups()
    n = len(groups)

    def plan(ranks: dict[int, int], fmt: Any = hqq8) -> Any:
        return Plan(model=spec.name, granularity="block", groups=tuple(
            PlanGroup(name=name, modules=modules, format=fmt, rank=ranks.get(i, 0))
            for i, (name, modules) in enumerate(groups)))

    def most(blocks: list[int], rank: int, fmt: Any) -> Any:
        """Rank ``rank`` on as many of ``blocks`` (in this order) as fit the budget."""
        k = max(k for k in range(n + 1) if memory.total(plan({i: rank for i in blocks[:k]}, fmt)) <= budget)
        return plan({i: rank for i in blocks[:k]}, fmt)

    demand = demand_order(setup, n)
    late = list(range(n - 1, -1, -1))
    if budget_name == "qlora":
        plans = {
            "hqq8-r4": plan({i: 4 for i in range(n)}),
            "late-r8": plan({i: 8 for i in range(n - n // 2, n)}),
            "early-r8": plan({i: 8 for i in range(n // 2)}),
            "demand-r8": plan({i: 8 for i in demand[: n // 2]}),
            "late-r16": most(late, 16, hqq8),
        }
    else:
        plans = {"demand-r4": most(demand, 4, hqq4), "late-r4": most(late, 4, hqq4)}
        plans.update({name: pinned_plan(setup, PINNED[name]) if name in PINNED else chosen_plan(setup, name, budget_name)
                      for name in BASELINES[budget_name]})
    for name, p in plans.items():
        peak = memory.total(p)
        if peak > budget:
            raise SystemExit(f"adapter_placement: {name} needs {peak} bytes, over the budget's {budget}")
    return plans


def pinned_plan(setup: compare.Setup, hash_prefix: str) -> Any:
    """A plan by its hash, from the comparison's `final` cells (each holds its plan)."""
    from autoqra.domain import Plan

    found = sorted((setup.out / "finals").glob(f"{TASK}.{hash_prefix}.*.json"))
    if not found:
        raise SystemExit(f"adapter_placement: no `final` cell of plan {hash_prefix} in {setup.out / 'finals'}")
    return Plan.from_dict(json.loads(found[0].read_text())["plan"], str(found[0]))


def chosen_plan(setup: compare.Setup, method: str, budget_name: str) -> Any:
    """The plan ``method`` chose in the comparison's cell at this budget, search seed 0."""
    from autoqra.domain import Plan

    path = setup.out / "cells" / f"{compare.cell_name(method, TASK, budget_name, 's0')}.json"
    if not path.is_file():
        raise SystemExit(f"adapter_placement: no comparison cell {path}; run experiments/compare.py --grid secondary")
    return Plan.from_dict(json.loads(path.read_text())["plan"], str(path))


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
    parser.add_argument("--budget", choices=list(PLANS), default="qlora")
    parser.add_argument("--plans", nargs="+", choices=sorted({p for ps in PLANS.values() for p in ps}),
                        help="default: every plan of the budget")
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
    chosen = args.plans or list(PLANS[args.budget])
    wrong = [p for p in chosen if p not in PLANS[args.budget]]
    if wrong:
        print(f"adapter_placement: error: {', '.join(wrong)} not a plan at {args.budget} "
              f"(its plans: {', '.join(PLANS[args.budget])})", file=sys.stderr)
        return 2
    plans = build_plans(setup, args.budget)
    names = [*BASELINES[args.budget], *chosen]
    finals = compare.Finals(setup)
    if not args.report_only:
        for seed in args.seeds:  # one seed of every plan first: a first answer for all of them sooner
            for name in names:
                finals.get(TASK, plans[name], seeds=(seed,))
    print_table(setup, finals, plans, names, args.seeds, args.budget)
    return 0


def print_table(setup: compare.Setup, finals: compare.Finals, plans: dict[str, Any], names: list[str],
                seeds: list[int], budget_name: str) -> None:
    from autoqra.space.memory import MemoryModel
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import load_space

    space = load_space(setup.space)
    memory = MemoryModel(model_spec(space.model), space.setup)
    budget = compare.budget_bytes(setup, budget_name)

    def values(plan: Any) -> dict[int, float]:
        got = {}
        for seed in seeds:
            path = finals.path(TASK, plan.plan_hash, "default", seed)
            if path.is_file():
                got[seed] = json.loads(path.read_text())["objective"]
        return got

    bases = {b: values(plans[b]) for b in BASELINES[budget_name]}
    print(f"{TASK} at {budget_name} ({budget / 2**20:.1f} MiB); `final` seeds {' '.join(map(str, seeds))}; "
          f"objective = -held-out loss, higher is better; paired = mean ± std over seeds of (plan - baseline)")
    print(f"{'plan':15} {'hash':8} {'adapters':>22} {'peak':>7} {'budget':>6} "
          + " ".join(f"{'s' + str(s):>8}" for s in seeds) + "".join(f" {'vs ' + b:>34}" for b in bases))
    for name in names:
        plan = plans[name]
        got = values(plan)
        adapted = [i for i, g in enumerate(plan.groups) if g.rank > 0]
        ranks = sorted({g.rank for g in plan.groups if g.rank > 0})
        where = f"r{'/'.join(map(str, ranks))} on {len(adapted)} ({adapted[0]}-{adapted[-1]})" if adapted else "none"
        peak = memory.total(plan)
        cols = " ".join(f"{got[s]:8.4f}" if s in got else f"{'-':>8}" for s in seeds)
        pairs = "".join(f" {paired(got, base) if name != b else '-':>34}" for b, base in bases.items())
        print(f"{name:15} {plan.plan_hash[:8]} {where:>22} {peak / 2**20:6.1f}M {peak / budget:6.1%} {cols}{pairs}")


def paired(got: dict[int, float], base: dict[int, float]) -> str:
    diffs = [got[s] - base[s] for s in got if s in base]
    if not diffs:
        return "-"
    return (f"{statistics.mean(diffs):+.4f}" + (f" ± {statistics.stdev(diffs):.4f}" if len(diffs) > 1 else "")
            + f" ({' / '.join(f'{d:+.4f}' for d in diffs)})")

if __name__ == "__main__":
    raise SystemExit(main())
