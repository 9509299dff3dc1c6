"""The search as a library call: ``run_search(SearchRequest(budget="qlora"))``.

``prepare_search`` checks a request in full (space, model, task, budget, priors file, run directory)
before anything is created, loaded or logged; ``run_search`` then assembles the parts — priors,
evaluator, ledger, pipeline — runs the search and writes the run directory. Progress goes to the
``autoqra`` logger (the CLI prints it on stderr); the outcome comes back as a value, so a notebook,
a Ray job or a test runs a search without faking command-line arguments.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoqra.domain import Plan
from autoqra.errors import AutoQRAError
from autoqra.priors.schema import Priors
from autoqra.search.codec import SearchCodec
from autoqra.search.pipeline import RunConfig, RunOutcome, SearchPipeline, fidelity_costs
from autoqra.search.repair import Repairer
from autoqra.search.settings import SearchPreset, parse_duration, preset
from autoqra.search.utility import PriorUtility, flat_utility, utility_from_priors
from autoqra.service.requests import (
    STRATEGIES_WITH_PRIORS,
    SearchRequest,
    check_resume_dir,
    check_run_dir,
    lowest_quantized,
    read_priors_file,
    resolve_trial_inputs,
)
from autoqra.space.budget import ResolvedBudget, format_bytes, parse_budget, resolve
from autoqra.space.memory import MEMORY_MODEL_VERSION
from autoqra.space.model_spec import ModelSpec
from autoqra.space.reference import QLORA_FORMAT, REFERENCE_RANK
from autoqra.space.search_space import SearchSpace

if TYPE_CHECKING:
    import numpy as np

    from autoqra.executors.local import WorkerSlot
    from autoqra.search.runner import TrialRunner
    from autoqra.store.ledger import Ledger, Replay
    from autoqra.trials.evaluator import EvaluatorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedSearch:
    """A checked request with everything resolved that needs no model weights."""

    request: SearchRequest
    space: SearchSpace
    spec: ModelSpec
    task: str
    preset: SearchPreset
    time_limit_s: float | None
    codec: SearchCodec
    budget: ResolvedBudget
    priors: Priors | None  # from the request's priors file; None: measured (or cached) at run time
    run_dir: Path
    device: str  # resolved: cpu or cuda
    storage_url: str  # the trial store: --storage, else SQLite in the run directory
    run_id: str  # marks this run's trials in a study several runs may write; kept across resumes
    resumed: dict[str, Any] | None = None  # the stored settings of the run this search resumes


@dataclass(frozen=True)
class SearchOutcome:
    """What a finished search returns: the run directory and what the search found."""

    run_dir: Path
    budget_bytes: int
    run: RunOutcome
    files: tuple[str, ...]
    codec: SearchCodec
    storage_url: str = ""
    study: str = "autoqra"

    @property
    def chosen_plan(self) -> Plan | None:
        return self.run.chosen.ask.plan if self.run.chosen is not None else None

    def report_lines(self) -> list[str]:
        from autoqra.report.run_files import report_lines

        return report_lines(self.run, self.budget_bytes)


def prepare_search(request: SearchRequest) -> PreparedSearch:
    """Check ``request`` against the file system and the model's config; raises AutoQRAError (one line)."""
    from autoqra.trials.models import local_fingerprint, resolve_device

    space, spec, task = resolve_trial_inputs(request.space, request.model, request.task)
    chosen = preset(request.preset)
    costs = fidelity_costs(space.fidelities)
    if request.final_top is not None:
        chosen = chosen.with_final_top(request.final_top)
    if "final" not in space.fidelities:
        if request.final_top:
            raise AutoQRAError(f"--final-top {request.final_top}: space {space.name} has no `final` fidelity to "
                               "retrain at; add one to the space or leave --final-top out")
        chosen = chosen.with_final_top(0)  # nothing to retrain at; the plan is chosen by `high`
    if request.max_trials is not None:
        chosen = chosen.with_trial_budget(request.max_trials, costs)
    codec = SearchCodec(spec, space)
    budget = resolve(parse_budget(request.budget), codec.memory)
    Repairer(codec, flat_utility(codec), budget.bytes).check_reachable()  # InfeasibleBudget states the minimum
    device = resolve_device(request.device)
    priors = None
    if request.priors is not None:
        priors = read_priors_file(request.priors, spec, space.granularity, local_fingerprint(space.model))
    elif request.strategy in STRATEGIES_WITH_PRIORS:
        lowest_quantized(space, spec)
    _check_executor(request, device, budget.bytes)
    storage_url, resumed, run_dir, run_id = _storage_and_run(request)
    prepared = PreparedSearch(request=request, space=space, spec=spec, task=task, preset=chosen,
                              time_limit_s=parse_duration(request.time_limit) if request.time_limit else None,
                              codec=codec, budget=budget, priors=priors, run_dir=run_dir, device=device,
                              storage_url=storage_url, run_id=run_id, resumed=resumed)
    _check_against_study(prepared)
    return prepared


def _check_executor(request: SearchRequest, device: str, budget_bytes: int) -> None:
    """Executor input that can be checked without starting workers: slots, the Ray head's port."""
    if request.executor == "local":
        _slots(request, device, budget_bytes)
    if request.executor == "ray" and request.ray_address not in (None, "auto"):
        from autoqra.executors.ray_tasks import check_reachable

        check_reachable(request.ray_address)


def _storage_and_run(request: SearchRequest) -> tuple[str, dict[str, Any] | None, Path, str]:
    """The trial store, the stored settings of a resumed run, the run directory and the run id."""
    import uuid

    from autoqra.service import run_store

    url = run_store.normalize_url(request.storage) if request.storage else None
    if url is not None:
        run_store.check_reachable(url)
    if request.resume:
        stored = run_store.stored_settings(request.out, url, request.study)
        if url is None:
            elsewhere = run_store.resume_storage(stored, request.out)  # the run's trials live in a database
            if elsewhere is not None:
                url = run_store.normalize_url(elsewhere)
                run_store.check_reachable(url)
        run_dir = request.out or Path(stored.get("run_dir") or "")
        if not str(run_dir) or run_dir == Path():
            raise AutoQRAError("--resume: the run's directory is unknown; give it with --out")
        check_resume_dir(run_dir)
        return url or run_store.default_url(run_dir), stored, run_dir, str(stored["run_id"])
    run_dir = request.out or Path("runs") / f"{request.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_run_dir(run_dir)
    return url or run_store.default_url(run_dir), None, run_dir, uuid.uuid4().hex[:12]


def _check_against_study(p: PreparedSearch) -> None:
    """A resume must match its run; a search joining an existing study must match the study's run."""
    from autoqra.service import run_store

    new = run_store.run_key(_core_settings(p))
    if p.resumed is not None:
        stored = run_store.run_key(p.resumed)
        if stored["memory_model"] != new["memory_model"]:
            version = run_store.first_difference(stored, new, ("memory_model",))
            raise AutoQRAError(f"--resume {p.run_dir}: the run's plans were priced by another memory model "
                               f"({version}; docs/memory-model.md): its feasible plans are not this version's; start a new run")
        diff = run_store.first_difference(stored, new, run_store.RESUME_KEYS)
        if diff is not None:
            raise AutoQRAError(f"--resume {p.run_dir}: this search differs from the run in {diff}; resume with the "
                               "run's settings, or start a new run")
        return
    if p.request.storage:
        existing = run_store.study_settings(p.storage_url, p.request.study)
        if existing is not None:
            diff = run_store.first_difference(run_store.run_key(existing), new, run_store.JOIN_KEYS)
            if diff is not None:
                raise AutoQRAError(f"study {p.request.study!r} at {run_store.shown(p.storage_url)} holds a run that "
                                   f"differs in {diff}; choose another --study")


def _core_settings(p: PreparedSearch) -> dict[str, Any]:
    return {"memory_model": MEMORY_MODEL_VERSION, "model": p.space.model, "space": p.space.model_dump(mode="json"),
            "task": p.task, "strategy": p.request.strategy, "preset": asdict(p.preset), "seed": p.request.seed,
            "budget": {"text": p.request.budget, "bytes": p.budget.bytes, "explanation": p.budget.explanation}}


def run_search(request: SearchRequest | PreparedSearch) -> SearchOutcome:
    """Run a search end to end and write its run directory (see ``docs/search.md``).

    A resumed search (``resume=True``) replays its run: the stages ask again from the same seed and
    every trial the ledger holds comes back from it instead of running; trials a dead process left
    RUNNING are marked failed and run again."""
    p = request if isinstance(request, PreparedSearch) else prepare_search(request)
    if p.resumed is None:
        check_run_dir(p.run_dir)  # again: a prepared search may be run twice, never into one run directory
    _log_settings(p)
    try:
        p.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AutoQRAError(f"cannot create run directory {p.run_dir}: {exc.strerror or exc}") from None
    log.info(f"  run dir   {p.run_dir}{' (resumed)' if p.resumed is not None else ''}")
    from autoqra.service.run_store import shown

    log.info(f"  store     {shown(p.storage_url)}, study {p.request.study!r}, run {p.run_id}")
    config, checkpointing = _evaluator_config(p)
    runner = _runner(p, config)  # an unreachable Ray cluster fails here, before anything is recorded
    try:
        utility, sensitivity, priors = flat_utility(p.codec), None, None
        if p.request.strategy in STRATEGIES_WITH_PRIORS:
            import numpy as np

            priors = _priors(p)
            utility = utility_from_priors(p.codec, priors)
            sensitivity = np.array([g.sensitivity for g in priors.groups])
            if p.resumed is None:
                (p.run_dir / "priors.json").write_text(priors.to_json() + "\n")
        settings = _settings(p, checkpointing, priors is not None)
        ledger = _ledger(p)
        replay = None
        if p.resumed is None:
            (p.run_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
            ledger.set_run_info("settings", settings)
            if priors is not None:
                ledger.set_run_info("priors", priors.model_dump(mode="json", by_alias=True))
        else:
            replay = _replay(p, ledger)
        run = _run_pipeline(p, utility, sensitivity, runner, ledger, replay)
    finally:
        runner.close()
    from autoqra.report.run_files import write_run_files

    written, summary = write_run_files(p.run_dir, run, p.budget.bytes)
    ledger.set_run_info("summary", summary)
    written += _write_plots(p.run_dir, p.storage_url, p.request.study)
    files = tuple(f for f in (*written, "settings.json", "priors.json", "trials.db", "trials.jsonl")
                  if (p.run_dir / f).is_file())
    return SearchOutcome(run_dir=p.run_dir, budget_bytes=p.budget.bytes, run=run, codec=p.codec, files=files,
                         storage_url=p.storage_url, study=p.request.study)


def _replay(p: PreparedSearch, ledger: Ledger) -> Replay:
    from autoqra.store.ledger import Replay

    stale = ledger.fail_running("left running by a search process that died; run again by the resume")
    entries = [e for e in ledger.entries() if e.run_id in (p.run_id, "")]
    log.info(f"resume: {len(entries)} finished trial(s) of run {p.run_id} come from the ledger"
             + (f"; {stale} left running by the dead process are marked failed and run again" if stale else ""))
    replay = Replay(entries)
    if other := replay.at_other_seeds(p.request.seed):
        log.warning(f"resume: {other} of these trial(s) were trained at seeds this version no longer derives "
                    "(recorded before every plan of a run shared one seed per fidelity); they cannot be replayed "
                    "and will be run again at the shared seeds; their records stay in the ledger.")
    return replay


def _log_settings(p: PreparedSearch) -> None:
    codec, space, setup, budget = p.codec, p.space, p.space.setup, p.budget
    costs = fidelity_costs(space.fidelities)
    log.info(f"search: model {space.model} ({len(codec.groups)} {space.granularity} groups), task {p.task}, "
             f"space {space.name}")
    log.info(f"  choices   formats {', '.join(f.label for f in codec.formats)} (ladder by stored bytes); "
             f"ranks {', '.join(map(str, codec.ranks))}")
    log.info(f"  budget    {budget.explanation} ({format_bytes(budget.bytes)}; GB = GiB = 2^30 bytes) of peak "
             f"training memory at batch {setup.batch_size} x seq {setup.seq_len}, {setup.compute_dtype}, "
             f"{setup.optimizer}, {'with' if setup.grad_checkpointing else 'without'} gradient checkpointing")
    log.info(f"  reachable {format_bytes(codec.min_bytes)} (cheapest plan) to {format_bytes(codec.max_bytes)} "
             "(richest plan)")
    if codec.max_bytes <= budget.bytes:
        log.info("  note      every plan of the space fits this budget: the constraint never binds, the front is "
                 "still explored")
    limit = f", time limit {p.time_limit_s:.0f} s" if p.time_limit_s else ""
    final = (f" = {p.preset.max_cost:g} for the search + {p.preset.final_top} final trials x {costs['final']:.3g}"
             if p.preset.final_top else " (no final selection: the plan is chosen by its high result)")
    log.info(f"  strategy  {p.request.strategy}, preset {p.preset.name}: trial budget "
             f"{p.preset.total_cost(costs):g} high-trial units{final}{limit}, seed {p.request.seed}")
    for name in [n for n in ("low", "high", "final") if n in space.fidelities]:
        f = space.fidelities[name]
        log.info(f"  fidelity  {name}: {f.steps} steps x batch {f.batch_size} x seq {f.seq_len}, "
                 f"{f.eval_examples} eval examples; cost {costs[name]:.3g}")


def _priors(p: PreparedSearch) -> Priors:
    from autoqra.trials.importance import cached_space_priors
    from autoqra.trials.models import resolve_weights

    space = p.space
    stored = p.run_dir / "priors.json"
    if p.resumed is not None and stored.is_file():
        log.info(f"priors: the run's own ({stored})")
        return Priors.from_json(stored.read_text(), str(stored))
    if p.priors is not None:
        assert p.request.priors is not None
        p.priors.check_matches(p.spec.groups(space.granularity), resolve_weights(space.model).fingerprint,
                               str(p.request.priors))
        log.info(f"priors: from {p.request.priors}")
        return p.priors
    lowest = lowest_quantized(space, p.spec)
    settings = p.preset.priors
    started = time.perf_counter()
    priors, path, cached = cached_space_priors(
        model=space.model, granularity=space.granularity, lowest=lowest, compute_dtype=space.training.compute_dtype,
        task=p.task, calibration=settings.calibration, seq_len=settings.seq_len,
        demand_batches=settings.demand_batches, seed=0)
    log.info(f"priors: {'from the cache' if cached else 'measured'} ({path}, {time.perf_counter() - started:.0f} s)")
    ranked = sorted(priors.groups, key=lambda g: -g.sensitivity)
    log.info(f"priors: most sensitive to {lowest.label}: "
             + ", ".join(f"{g.name} ({g.sensitivity:.3f})" for g in ranked[:4]))
    return priors


def _evaluator_config(p: PreparedSearch) -> tuple[EvaluatorConfig, bool]:
    from autoqra.trials.backends import dtype_note
    from autoqra.trials.evaluator import EvaluatorConfig

    device, t = p.device, p.space.training
    # The memory objective is always the prediction for the budget's setup. On CUDA trials also use
    # its gradient checkpointing, so their measured peaks compare with the prediction; on CPU
    # checkpointing would only slow trials (same gradients) and peaks are not measured.
    checkpointing = t.grad_checkpointing and device == "cuda"
    config = EvaluatorConfig.for_space(p.space, p.task, device=device, grad_checkpointing=checkpointing)
    checkpoint_note = "on" if checkpointing else "off (it changes memory, not results; the memory objective " \
                                                 "still uses the budget setup)"
    log.info(f"  trials    on {device}, {dtype_note(t.compute_dtype, device)}, {t.optimizer}, gradient checkpointing {checkpoint_note}")
    return config, checkpointing


def _runner(p: PreparedSearch, config: EvaluatorConfig) -> TrialRunner:
    """The executor the request names: inline (an evaluator here), a local pool, or Ray tasks."""
    from autoqra.executors.factories import TrialEvaluatorFactory

    r = p.request
    fidelities = dict(p.space.fidelities)
    if r.executor == "inline":
        from autoqra.executors.inline import InlineExecutor
        from autoqra.trials.evaluator import Evaluator

        log.info("  executor  inline: one trial at a time in this process")
        return InlineExecutor(Evaluator(config), fidelities)
    factory = TrialEvaluatorFactory(config)
    if r.executor == "local":
        from autoqra.executors.local import LocalExecutor

        slots = _slots(r, p.device, p.budget.bytes)
        where = (f"GPU {', '.join(sorted({s.cuda_device or '' for s in slots}))}" if p.device == "cuda"
                 else f"{slots[0].threads} CPU thread(s) each")
        log.info(f"  executor  local: {r.workers} spawned worker process(es), {where}")
        return LocalExecutor(factory, fidelities, slots)
    from autoqra.executors.ray_tasks import RayExecutor

    if r.trials_per_gpu is not None:
        raise AutoQRAError("--trials-per-gpu is for --executor local; Ray packs trials by predicted memory")
    import os

    # inside a Ray job (autoqra submit, ray job submit) RAY_ADDRESS names the job's cluster: join it
    address = r.ray_address or os.environ.get("RAY_ADDRESS") or None
    return RayExecutor(factory, fidelities, r.workers, address=address, device=p.device)


def _slots(r: SearchRequest, device: str, budget_bytes: int) -> list[WorkerSlot]:
    """The local pool's hardware split; on CUDA as many workers per GPU as the budget fits, unless
    --trials-per-gpu says."""
    import os

    from autoqra.executors.local import fit_per_gpu, plan_slots

    gpus, fit = 0, 1
    if device == "cuda":
        import torch

        gpus = int(torch.cuda.device_count())
        if gpus:
            fit = fit_per_gpu(int(torch.cuda.get_device_properties(0).total_memory), budget_bytes)
    return plan_slots(r.workers, device, cpu_count=os.cpu_count() or 1, gpu_count=gpus,
                      trials_per_gpu=r.trials_per_gpu, fit_per_gpu=fit)


def _settings(p: PreparedSearch, checkpointing: bool, has_priors: bool) -> dict[str, object]:
    """settings.json: what the run was (a resume is checked against it and rebuilt from it)."""
    from autoqra.service.run_store import shown

    if p.resumed is not None:
        return p.resumed
    r = p.request
    return {
        **_core_settings(p), "time_limit_s": p.time_limit_s, "fidelity_costs": fidelity_costs(p.space.fidelities),
        "device": p.device, "trial_grad_checkpointing": checkpointing,
        "priors_file": "priors.json" if has_priors else None,
        "run_id": p.run_id, "run_dir": str(p.run_dir.resolve()), "storage": shown(p.storage_url), "study": r.study,
        "request": {"budget": r.budget, "model": r.model, "space": str(r.space), "task": r.task, "strategy": r.strategy,
                    "preset": r.preset, "max_trials": r.max_trials, "final_top": r.final_top, "seed": r.seed,
                    "priors": str(r.priors) if r.priors else None, "device": r.device},
    }


def _ledger(p: PreparedSearch) -> Ledger:
    from autoqra.store.ledger import Ledger

    codec = p.codec
    # the store's choices: the space's, plus the QLoRA reference the uniform baseline also runs
    labels = tuple(dict.fromkeys([*(f.label for f in codec.formats), QLORA_FORMAT.label]))
    ranks = tuple(sorted({*codec.ranks, REFERENCE_RANK}))
    return Ledger(p.storage_url, p.run_dir / "trials.jsonl", labels, ranks, study_name=p.request.study,
                  run_id=p.run_id)


def _write_plots(run_dir: Path, storage_url: str, study: str) -> list[str]:
    """The run's plots (``plots/*.png``); a failure to draw is logged, never loses the run."""
    from autoqra.report.plots import write_plots
    from autoqra.report.run import load_run

    try:
        paths = write_plots(load_run(storage_url, study), run_dir / "plots")
    except Exception as exc:  # a by-product: a drawing failure is reported, never costs the finished run
        log.warning(f"plots: not written ({type(exc).__name__}: {exc}); `autoqra report {run_dir} --plot DIR` "
                    "retries them")
        return []
    log.info(f"plots: {', '.join(str(p) for p in paths)}")
    return [str(p.relative_to(run_dir)) for p in paths]


def _run_pipeline(p: PreparedSearch, utility: PriorUtility, sensitivity: np.ndarray | None,
                  runner: TrialRunner, ledger: Ledger, replay: Replay | None) -> RunOutcome:
    fidelities = dict(p.space.fidelities)
    pipeline = SearchPipeline(
        codec=p.codec, utility=utility, runner=runner, fidelities=fidelities, ledger=ledger, sensitivity=sensitivity,
        config=RunConfig(strategy=p.request.strategy, preset=p.preset, budget_bytes=p.budget.bytes,
                         seed=p.request.seed, time_limit_s=p.time_limit_s),
        replay=replay,
    )
    run = pipeline.run()
    if replay is not None:
        left = f"; {replay.left} recorded trial(s) were not asked again" if replay.left else ""
        log.info(f"resume: {pipeline.replayed_count} trial(s) replayed from the ledger, "
                 f"{len(run.archive.items) - pipeline.replayed_count} run now{left}")
    return run
