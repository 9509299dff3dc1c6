"""``autoqra search``: per-layer bits and LoRA ranks under a peak-training-memory budget, end to end."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from autoqra.commands.common import space_for
from autoqra.errors import AutoQRAError
from autoqra.space.budget import format_bytes, parse_budget, resolve
from autoqra.space.model_spec import ModelSpec, model_spec

if TYPE_CHECKING:
    import numpy as np

    from autoqra.priors.schema import Priors
    from autoqra.search.codec import SearchCodec
    from autoqra.search.settings import SearchPreset
    from autoqra.search.utility import PriorUtility
    from autoqra.space.search_space import SearchSpace
    from autoqra.trials.evaluator import Evaluator


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_dir(out: Path | None, strategy: str) -> Path:
    run_dir = out if out is not None else Path("runs") / f"{strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_dir.exists() and not run_dir.is_dir():
        raise AutoQRAError(f"--out {run_dir} exists and is not a directory")
    if (run_dir / "trials.db").exists():
        raise AutoQRAError(f"--out {run_dir} already holds a run (trials.db); choose a new directory "
                           "(nothing there was changed)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AutoQRAError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    return run_dir


def run_search(args: argparse.Namespace) -> int:
    import numpy as np

    from autoqra.search.codec import SearchCodec
    from autoqra.search.repair import Repairer
    from autoqra.search.settings import parse_duration, preset
    from autoqra.search.utility import flat_utility, utility_from_priors

    space = space_for(args)
    spec = model_spec(space.model)
    space.check_model(spec)
    task = args.task or space.task
    chosen_preset = preset(args.preset)
    if args.max_trials is not None:
        chosen_preset = chosen_preset.with_max_cost(args.max_trials)
    time_limit = parse_duration(args.time_limit) if args.time_limit else None
    codec = SearchCodec(spec, space)
    budget = resolve(parse_budget(args.budget), codec.memory)
    Repairer(codec, flat_utility(codec), budget.bytes).check_reachable()  # InfeasibleBudget states the minimum
    from autoqra.search.pipeline import fidelity_costs

    costs = fidelity_costs(space.fidelities)
    setup = space.setup
    _log(f"search: model {space.model} ({len(codec.groups)} {space.granularity} groups), task {task}, space {space.name}")
    _log(f"  choices   formats {', '.join(f.label for f in codec.formats)} (ladder by stored bytes); "
         f"ranks {', '.join(map(str, codec.ranks))}")
    _log(f"  budget    {budget.explanation} ({format_bytes(budget.bytes)}; GB = GiB = 2^30 bytes) of peak training "
         f"memory at batch {setup.batch_size} x seq {setup.seq_len}, {setup.compute_dtype}, {setup.optimizer}, "
         f"{'with' if setup.grad_checkpointing else 'without'} gradient checkpointing")
    _log(f"  reachable {format_bytes(codec.min_bytes)} (cheapest plan) to {format_bytes(codec.max_bytes)} (richest plan)")
    if codec.max_bytes <= budget.bytes:
        _log("  note      every plan of the space fits this budget: the constraint never binds, the front is "
             "still explored")
    _log(f"  strategy  {args.strategy}, preset {chosen_preset.name}: trial budget {chosen_preset.max_cost:g} "
         f"high-trial units" + (f", time limit {time_limit:.0f} s" if time_limit else "") + f", seed {args.seed}")
    for name in ("low", "high"):
        f = space.fidelities[name]
        _log(f"  fidelity  {name}: {f.steps} steps x batch {f.batch_size} x seq {f.seq_len}, "
             f"{f.eval_examples} eval examples; cost {costs[name]:.3g}")

    run_dir = _run_dir(args.out, args.strategy)
    _log(f"  run dir   {run_dir}")
    priors = None
    sensitivity = None
    utility = flat_utility(codec)
    if args.strategy in ("autoqra", "sequential"):
        priors = _priors(args, space, spec, task, chosen_preset)
        utility = utility_from_priors(codec, priors)
        sensitivity = np.array([g.sensitivity for g in priors.groups])
        (run_dir / "priors.json").write_text(priors.to_json() + "\n")
    evaluator, device, checkpointing = _evaluator(args, space, task)
    _log(f"  trials    on {device}, {space.training.compute_dtype}, gradient checkpointing "
         f"{'on' if checkpointing else 'off (it changes memory, not results; the memory objective still uses the budget setup)'}")
    settings = {
        "model": space.model, "space": space.model_dump(mode="json"), "task": task, "strategy": args.strategy,
        "preset": asdict(chosen_preset), "budget": {"text": args.budget, "bytes": budget.bytes,
                                                   "explanation": budget.explanation},
        "seed": args.seed, "time_limit_s": time_limit, "fidelity_costs": costs, "device": device,
        "trial_grad_checkpointing": checkpointing, "priors_file": "priors.json" if priors else None,
    }
    (run_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return _search(args, codec, utility, sensitivity, evaluator, space, budget.bytes, chosen_preset, time_limit,
                   run_dir)


def _priors(args: argparse.Namespace, space: SearchSpace, spec: ModelSpec, task: str,
            chosen_preset: SearchPreset) -> Priors:
    from autoqra.priors.schema import Priors, PriorsError
    from autoqra.trials.importance import cached_space_priors
    from autoqra.trials.models import resolve_weights

    if args.priors is not None:
        try:
            text = args.priors.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PriorsError(f"cannot read --priors {args.priors}: {getattr(exc, 'strerror', None) or exc}") from None
        priors = Priors.from_json(text, source=str(args.priors))
        priors.check_matches(spec.groups(space.granularity), resolve_weights(space.model).fingerprint,
                             str(args.priors))
        _log(f"priors: from {args.priors}")
        return priors
    lowest = space.ladder(spec)[0]
    if not lowest.quantized:
        raise AutoQRAError(f"space {space.name} has no quantized format to measure sensitivity with")
    p = chosen_preset.priors
    started = time.perf_counter()
    priors, path, cached = cached_space_priors(
        model=space.model, granularity=space.granularity, lowest=lowest, compute_dtype=space.training.compute_dtype,
        task=task, calibration=p.calibration, seq_len=p.seq_len, demand_batches=p.demand_batches, seed=0, log=_log)
    _log(f"priors: {'from the cache' if cached else 'measured'} ({path}, {time.perf_counter() - started:.0f} s)")
    ranked = sorted(priors.groups, key=lambda g: -g.sensitivity)
    _log("priors: most sensitive to " + lowest.label + ": " + ", ".join(f"{g.name} ({g.sensitivity:.3f})"
                                                                        for g in ranked[:4]))
    return priors


def _evaluator(args: argparse.Namespace, space: SearchSpace, task: str) -> tuple[Evaluator, str, bool]:
    import torch

    from autoqra.trials.evaluator import Evaluator, EvaluatorConfig

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # On CUDA trials train exactly as the budget's setup says, so measured peaks compare with the
    # model; on CPU checkpointing only slows trials (same gradients) and peaks are not measured.
    checkpointing = space.training.grad_checkpointing and device == "cuda"
    t = space.training
    config = EvaluatorConfig(model=space.model, task=task, compute_dtype=t.compute_dtype, device=device,
                             learning_rate=t.learning_rate, warmup_ratio=t.warmup_ratio, alpha_ratio=t.lora_alpha_ratio,
                             grad_checkpointing=checkpointing)
    return Evaluator(config), device, checkpointing


def _search(args: argparse.Namespace, codec: SearchCodec, utility: PriorUtility, sensitivity: np.ndarray | None,
            evaluator: Evaluator, space: SearchSpace, budget_bytes: int, chosen_preset: SearchPreset,
            time_limit: float | None, run_dir: Path) -> int:
    from autoqra.executors.inline import InlineExecutor
    from autoqra.report.run_files import report_lines, write_run_files
    from autoqra.search.baselines import QLORA_FORMAT
    from autoqra.search.pipeline import RunConfig, SearchPipeline
    from autoqra.store.ledger import Ledger, sqlite_url

    labels = tuple(dict.fromkeys([*(f.label for f in codec.formats), QLORA_FORMAT.label]))
    ranks = tuple(sorted({*codec.ranks, 16}))
    ledger = Ledger(sqlite_url(run_dir), run_dir / "trials.jsonl", labels, ranks)
    pipeline = SearchPipeline(
        codec=codec, utility=utility, runner=InlineExecutor(evaluator, dict(space.fidelities)),
        fidelities=dict(space.fidelities), ledger=ledger, sensitivity=sensitivity, log=_log,
        config=RunConfig(strategy=args.strategy, preset=chosen_preset, budget_bytes=budget_bytes, seed=args.seed,
                         time_limit_s=time_limit),
    )
    outcome = pipeline.run()
    written = write_run_files(run_dir, outcome, budget_bytes)
    for line in report_lines(outcome, codec, budget_bytes):
        print(line)
    print(f"wrote {run_dir}/: {', '.join(written)}, settings.json, trials.db (Optuna: optuna-dashboard "
          f"{sqlite_url(run_dir)}), trials.jsonl")
    return 0 if outcome.chosen is not None else 1
