"""How faithful are the search's fidelities? Rank agreement of `low` and `high` with `final`.

Trains a fixed, diverse set of plans under the ``qlora`` budget of a space (the QLoRA reference,
the richest uniform plans that fit, the sequential quantize-then-LoRA plan at each rank, the
priors-driven plan, seeded random feasible plans) at ``low``, ``high`` and ``final``, plus a second
``final`` seed for a subset, and prints Spearman rho(low, final), rho(high, final) and the seed-to-
seed rho at ``final``. Every trial is a real training run on this machine.

Resumable: each (plan, fidelity, seed) cell is a JSON file under ``--out`` written when it finishes;
a rerun skips finished cells, so the study can be completed over several sessions and its cells
committed as they come. Cells run cheapest first (all ``low``, then ``high``, then ``final``).

    .venv/bin/python experiments/fidelity_study.py                 # run what is missing, then report
    .venv/bin/python experiments/fidelity_study.py --report-only   # only the report from the cells
    .venv/bin/python experiments/fidelity_study.py --task codebook # the same study on another task
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SEED_SUBSET = 5  # plans that get a second `final` seed


def study_plans(space_name: str, n_random: int, seed: int, out: Path, task: str | None = None) -> list[tuple[str, object]]:
    """(label, Plan) pairs. Chosen once, then read back from ``plans.json`` in ``out``: the study's set
    stays fixed while the search's priors and utility change (its cells are keyed by plan hash)."""
    from autoqra.domain import Plan

    frozen = out / f"plans.{space_name}.json"
    if frozen.is_file():
        return [(row["label"], Plan.from_dict(row["plan"], str(frozen))) for row in json.loads(frozen.read_text())]
    plans = choose_plans(space_name, n_random, seed, task)
    out.mkdir(parents=True, exist_ok=True)
    frozen.write_text(json.dumps([{"label": label, "plan": plan.to_dict()} for label, plan in plans],
                                 indent=1) + "\n")
    return plans


def choose_plans(space_name: str, n_random: int, seed: int, task: str | None = None) -> list[tuple[str, object]]:
    """(label, Plan) pairs, deterministic for a space, task, seed and the code of the day; duplicates dropped."""
    import numpy as np

    from autoqra.search.baselines import sequential_stage
    from autoqra.search.codec import SearchCodec
    from autoqra.search.repair import Repairer
    from autoqra.search.settings import preset
    from autoqra.search.utility import flat_utility, utility_from_priors
    from autoqra.search.warm_start import prior_plan, uniform_that_fit
    from autoqra.space.budget import parse_budget, resolve
    from autoqra.space.model_spec import model_spec
    from autoqra.space.reference import qlora_plan
    from autoqra.space.search_space import load_space
    from autoqra.trials.importance import cached_space_priors

    space = load_space(space_name)
    spec = model_spec(space.model)
    codec = SearchCodec(spec, space)
    budget = resolve(parse_budget("qlora"), codec.memory).bytes
    p = preset("quick").priors
    priors, _, _ = cached_space_priors(model=space.model, granularity=space.granularity,
                                       lowest=space.ladder(spec)[0], compute_dtype=space.training.compute_dtype,
                                       task=task or space.task, calibration=p.calibration, seq_len=p.seq_len,
                                       demand_batches=p.demand_batches, seed=0)
    plans: list[tuple[str, object]] = [("qlora-nf4dq-r16", qlora_plan(spec, space.granularity))]
    for genome in [g for g in uniform_that_fit(codec, budget) if g[0][1] > 0][:5]:
        f, r = genome[0]
        plans.append((f"uniform-{codec.formats[f].label}-r{codec.ranks[r]}", codec.decode(genome)))
    for ask in sequential_stage(codec, np.array([g.sensitivity for g in priors.groups]), budget).ask(10):
        rank = ask.plan.groups[0].rank
        plans.append((f"sequential-r{rank}", ask.plan))
    plans.append(("priors", codec.decode(prior_plan(Repairer(codec, utility_from_priors(codec, priors), budget)))))
    rng = np.random.default_rng(seed)
    repairer = Repairer(codec, flat_utility(codec), budget)
    for i in range(n_random):
        plans.append((f"random-{i}", codec.decode(repairer.repair(codec.random(rng)))))
    seen: set[str] = set()
    unique = []
    for label, plan in plans:
        if plan.plan_hash not in seen and plan.has_adapters:
            seen.add(plan.plan_hash)
            unique.append((label, plan))
    return unique


def cell_path(out: Path, label: str, plan_hash: str, fidelity: object, seed_index: int) -> Path:
    """One file per cell; the fidelity's whole definition is in the name, so re-tuned fidelities get
    new cells instead of mixing with old ones."""
    f = fidelity
    key = f"{f.name}-{f.steps}x{f.batch_size}x{f.seq_len}e{f.eval_examples}a{f.grad_accum}"
    return out / f"{label}.{plan_hash[:8]}.{key}.s{seed_index}.json"


def study_seed(run_seed: int, plan_hash: str, fidelity: str) -> int:
    """The trial seed of a study cell: one per (run seed, plan, fidelity). This is how the search derived
    trial seeds when the study's cells were measured; the search now gives every plan of a fidelity the
    same seed (``autoqra.domain.derive_seed``), but the study keeps its own so a rerun reproduces its cells
    (and its seed-to-seed rho still moves batches and init together, plan by plan)."""
    import hashlib

    return int(hashlib.sha256(f"{run_seed}:{plan_hash}:{fidelity}".encode()).hexdigest()[:8], 16)


def run_cells(args: argparse.Namespace, plans: list[tuple[str, object]]) -> None:
    from autoqra.space.search_space import load_space
    from autoqra.trials.evaluator import Evaluator, EvaluatorConfig

    space = load_space(args.space)
    cells = [(label, plan, f, 0) for f in ("low", "high", "final") for label, plan in plans]
    cells += [(label, plan, "final", 1) for label, plan in plans[:SEED_SUBSET]]
    todo = [c for c in cells
            if not cell_path(args.out, c[0], c[1].plan_hash, space.fidelities[c[2]], c[3]).is_file()]
    print(f"fidelity study: {len(plans)} plans, {len(cells)} cells, {len(todo)} to run", file=sys.stderr, flush=True)
    if not todo:
        return
    evaluator = Evaluator(EvaluatorConfig.for_space(space, args.task, device=args.device))
    # cells whose trials computed in another dtype (bf16 on a CPU with fast bf16 kernels, fp32 without;
    # a cell from before results recorded it computed in the space's) differ in rounding: not mixed
    made_in = {(json.loads(p.read_text())["result"].get("execution_dtype") or space.training.compute_dtype)
               for p in args.out.glob("*.s[0-9].json")}
    if made_in - {evaluator.dtype}:
        print(f"fidelity study: error: the cells in {args.out} were computed in {', '.join(sorted(made_in))}; this "
              f"machine computes trials in {evaluator.dtype}: use another --out", file=sys.stderr)
        raise SystemExit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (label, plan, fidelity, seed_index) in enumerate(todo, 1):
        seed = study_seed(args.seed + seed_index, plan.plan_hash, fidelity)
        started = time.perf_counter()
        result = evaluator.evaluate(plan, space.fidelities[fidelity], seed)
        cell = {"label": label, "plan_hash": plan.plan_hash, "fidelity": fidelity, "seed_index": seed_index,
                "seed": seed, "status": result.status.value, "objective": result.objective,
                "eval_loss": result.metrics.eval_loss, "predicted_peak_bytes": evaluator_peak(space, plan),
                "wall_s": time.perf_counter() - started, "result": result.model_dump(mode="json")}
        path = cell_path(args.out, label, plan.plan_hash, space.fidelities[fidelity], seed_index)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cell, indent=1) + "\n")
        tmp.replace(path)
        print(f"[{i}/{len(todo)}] {label:<28} {fidelity:<5} s{seed_index} -> "
              f"{result.objective if result.objective is None else round(result.objective, 4)} "
              f"({cell['wall_s']:.0f} s)", file=sys.stderr, flush=True)


def evaluator_peak(space: object, plan: object) -> int:
    from autoqra.space.memory import MemoryModel
    from autoqra.space.model_spec import model_spec

    return MemoryModel(model_spec(space.model), space.setup).total(plan)


def report(out: Path, space_name: str, plans: list[tuple[str, object]]) -> None:
    from scipy.stats import spearmanr

    from autoqra.space.search_space import load_space

    fidelities = load_space(space_name).fidelities
    for name in ("low", "high", "final"):
        f = fidelities[name]
        print(f"{name:<6} {f.steps} steps x batch {f.batch_size} x seq {f.seq_len}, {f.eval_examples} eval examples")

    def value(label: str, plan_hash: str, fidelity: str, seed_index: int) -> float | None:
        path = cell_path(out, label, plan_hash, fidelities[fidelity], seed_index)
        if not path.is_file():
            return None
        return json.loads(path.read_text())["objective"]

    rows = []
    print(f"{'plan':<28} {'hash':<8} {'low':>8} {'high':>8} {'final':>8} {'final s2':>8}")
    for label, plan in plans:
        v = [value(label, plan.plan_hash, f, s) for f, s in (("low", 0), ("high", 0), ("final", 0), ("final", 1))]
        rows.append(v)
        print(f"{label:<28} {plan.plan_hash[:8]} " + " ".join(f"{x:>8.4f}" if x is not None else f"{'-':>8}" for x in v))

    def rho(a: int, b: int) -> str:
        pairs = [(r[a], r[b]) for r in rows if r[a] is not None and r[b] is not None]
        if len(pairs) < 3:
            return f"n/a ({len(pairs)} pairs)"
        return f"{spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic:.3f} over {len(pairs)} plans"

    print(f"Spearman rho(low, final)   {rho(0, 2)}")
    print(f"Spearman rho(high, final)  {rho(1, 2)}")
    print(f"Spearman rho(final seed 1, final seed 2)  {rho(2, 3)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default")
    parser.add_argument("--random-plans", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="run seed: trial seeds derive from it (default 0)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--task", help="train on this task instead of the space's (its priors choose the plans)")
    parser.add_argument("--out", type=Path, help="cells folder (default experiments/results/fidelity, or "
                                                 "fidelity-TASK with --task)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.out is None:
        args.out = ROOT / "experiments" / "results" / ("fidelity" + (f"-{args.task}" if args.task else ""))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from autoqra.cli import quiet_libraries

    quiet_libraries("search", verbose=False)  # no progress bar per trial, as in the CLI
    plans = study_plans(args.space, args.random_plans, args.seed, args.out, args.task)
    if not args.report_only:
        run_cells(args, plans)
    report(args.out, args.space, plans)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
