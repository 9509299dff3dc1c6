"""Measuring the priors as a library call: ``run_priors(PriorsRequest(...)) -> Priors``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from autoqra.domain import QuantFormat
from autoqra.priors.schema import Priors
from autoqra.service.requests import (
    PriorsRequest,
    check_output_file,
    lowest_quantized,
    resolve_trial_inputs,
    write_output,
)
from autoqra.space.search_space import SearchSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedPriors:
    request: PriorsRequest
    space: SearchSpace
    task: str
    lowest: QuantFormat
    n_groups: int


def prepare_priors(request: PriorsRequest) -> PreparedPriors:
    """Check ``request`` in full (the output file too); raises AutoQRAError before any measurement."""
    # priors train LoRA with plain gradients only: the space's optimizer is not used
    space, spec, task = resolve_trial_inputs(request.space, request.model, request.task, optimizer_needed=False)
    lowest = lowest_quantized(space, spec)
    check_output_file(request.out, "--out")
    return PreparedPriors(request=request, space=space, task=task, lowest=lowest,
                          n_groups=len(spec.groups(space.granularity)))


def run_priors(request: PriorsRequest | PreparedPriors) -> Priors:
    """Measure sensitivity and demand for every group and write them to ``request.out``."""
    from autoqra.trials.importance import measure_space_priors

    p = request if isinstance(request, PreparedPriors) else prepare_priors(request)
    r, space = p.request, p.space
    dtype = space.training.compute_dtype
    log.info(f"priors: model {space.model}, task {p.task}, {p.n_groups} {space.granularity} groups, sensitivity at "
             f"{p.lowest.label} on {r.calibration} x {r.seq_len} tokens, demand over {r.demand_batches} batches, {dtype}")
    priors = measure_space_priors(
        model=space.model, granularity=space.granularity, lowest=p.lowest, compute_dtype=dtype, task=p.task,
        calibration=r.calibration, seq_len=r.seq_len, demand_batches=r.demand_batches, seed=r.seed,
    )
    write_output(r.out, priors.to_json() + "\n")
    return priors
