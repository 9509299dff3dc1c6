"""One real trial as a library call: ``run_trial(TrialRequest(...)) -> TrialResult``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from autoqra.domain import Fidelity, Plan, TrialResult, derive_seed
from autoqra.errors import AutoQRAError
from autoqra.service.requests import TrialRequest, check_output_file, resolve_trial_inputs, write_output
from autoqra.space.search_space import SearchSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedTrial:
    request: TrialRequest
    space: SearchSpace
    plan: Plan
    plan_source: str
    fidelity: Fidelity
    task: str
    seed: int  # the trial seed, derived from (run seed, fidelity), as the search does
    device: str  # resolved: cpu or cuda


def prepare_trial(request: TrialRequest) -> PreparedTrial:
    """Check ``request`` in full; raises AutoQRAError (one line) before anything is loaded or written."""
    from autoqra.trials.models import resolve_device

    space, spec, task = resolve_trial_inputs(request.space, request.model, request.task)
    plan, source = request.plan.resolve(space, spec)
    if request.fidelity not in space.fidelities:
        raise AutoQRAError(f"space {space.name} has no fidelity {request.fidelity!r} "
                           f"(has {', '.join(space.fidelities)})")
    plan.check_trainable()
    device = resolve_device(request.device)
    if request.out is not None:
        check_output_file(request.out, "--out")
    fidelity = space.fidelities[request.fidelity]
    return PreparedTrial(request=request, space=space, plan=plan, plan_source=source, fidelity=fidelity, task=task,
                         seed=derive_seed(request.seed, fidelity.name), device=device)


def run_trial(request: TrialRequest | PreparedTrial) -> TrialResult:
    """Train and evaluate the plan; writes the result JSON to ``request.out`` when given."""
    from autoqra.trials.backends import dtype_note
    from autoqra.trials.evaluator import Evaluator, EvaluatorConfig

    p = request if isinstance(request, PreparedTrial) else prepare_trial(request)
    r, t, f = p.request, p.space.training, p.fidelity
    config = EvaluatorConfig.for_space(p.space, p.task, device=p.device, init=r.init,
                                       grad_checkpointing=r.grad_checkpointing)
    log.info(f"trial: model {p.space.model}, task {p.task}, fidelity {f.name} ({f.steps} steps x batch {f.batch_size} "
             f"x seq {f.seq_len}, {f.eval_examples} eval examples), {dtype_note(t.compute_dtype, p.device)}, {t.optimizer}, init {r.init}, "
             f"seed {p.seed}")
    log.info(f"plan: {p.plan_source}; {plan_summary(p.plan)}")
    result = Evaluator(config).evaluate(p.plan, f, p.seed)
    if r.out is not None:
        write_output(r.out, result.to_json() + "\n")
    return result


def plan_counts(plan: Plan) -> dict[str, int]:
    """How many block linears take each (format, rank), e.g. ``{"hqq4-g64 r=16": 210}``."""
    counts: dict[str, int] = {}
    for fmt, rank in plan.module_choices().values():
        key = f"{fmt.label} r={rank}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def plan_summary(plan: Plan) -> str:
    return ", ".join(f"{n} x {k}" for k, n in plan_counts(plan).items())
