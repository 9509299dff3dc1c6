"""Stage 2: a TuRBO-style trust region over ladder positions around the incumbent (BoTorch GP).

The region is a set of genomes near the *incumbent* (the best feasible ``high`` result): each group
is perturbed with probability ``length`` and moves at most ``max_step(length)`` ladder positions in
format and/or rank. Candidates are repaired to the budget, deduplicated against everything already
run at ``high``, and the batch (one per worker) is chosen by Thompson sampling from the GP over the
discrete candidates. Every chosen candidate gets a real ``high`` trial.

The state follows TuRBO (Eriksson et al., 2019): ``success_tolerance`` successes in a row double
the length, ``failure_tolerance`` failures in a row halve it, and when it falls below
``length_min`` the region restarts at full length around the best ``high`` plan not yet used as a
centre. A success is an improvement of the incumbent by more than ``1e-3 * |incumbent|``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from autoqra.search.codec import Genome, SearchCodec
from autoqra.search.evolution import observations
from autoqra.search.repair import Repairer
from autoqra.search.stage import HIGH_FIDELITY, Archive, Ask, Evaluated
from autoqra.search.surrogate import HIGH, PerformanceModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrustRegionState:
    length: float = 0.4
    length_min: float = 0.05
    length_max: float = 0.8
    success_count: int = 0
    failure_count: int = 0
    success_tolerance: int = 3
    failure_tolerance: int = 3
    restart: bool = False


def update_state(state: TrustRegionState, improved: bool) -> TrustRegionState:
    """TuRBO's rule: count successes/failures in a row, expand/shrink, flag a restart."""
    if improved:
        state = replace(state, success_count=state.success_count + 1, failure_count=0)
    else:
        state = replace(state, success_count=0, failure_count=state.failure_count + 1)
    if state.success_count >= state.success_tolerance:
        state = replace(state, length=min(2.0 * state.length, state.length_max), success_count=0)
    elif state.failure_count >= state.failure_tolerance:
        state = replace(state, length=state.length / 2.0, failure_count=0)
    return replace(state, restart=state.length < state.length_min)


def max_step(length: float, ladder: int) -> int:
    return max(1, int(round(length * (ladder - 1))))


def perturb(center: Genome, length: float, codec: SearchCodec, rng: np.random.Generator) -> Genome:
    """A genome inside the region: groups move with probability ``length``, at least one moves."""
    n = len(center)
    moving = rng.random(n) < length
    if not moving.any():
        moving[int(rng.integers(n))] = True
    f_step, r_step = max_step(length, codec.n_formats), max_step(length, codec.n_ranks)
    out = list(center)
    for g in np.flatnonzero(moving):
        f, r = out[g]
        which = rng.integers(3)  # 0: format, 1: rank, 2: both
        if which != 1 and codec.n_formats > 1:
            f = int(np.clip(f + rng.choice([-1, 1]) * rng.integers(1, f_step + 1), 0, codec.n_formats - 1))
        if which != 0 and codec.n_ranks > 1:
            r = int(np.clip(r + rng.choice([-1, 1]) * rng.integers(1, r_step + 1), 0, codec.n_ranks - 1))
        out[int(g)] = (f, r)
    return tuple(out)


class TrustRegionStage:
    name = "trust-region"

    def __init__(self, *, codec: SearchCodec, repairer: Repairer, model: PerformanceModel, archive: Archive,
                 rng: np.random.Generator, batch_size: int, n_candidates: int = 256,
                 state: TrustRegionState | None = None) -> None:
        self.codec, self.repairer, self.model, self.archive = codec, repairer, model, archive
        self.rng, self.batch_size, self.n_candidates = rng, batch_size, n_candidates
        self.state = state or TrustRegionState()
        self.centers: list[Genome] = []
        self._exhausted = False
        self._in_flight: dict[Genome, float | None] = {}  # asked, not told yet -> the incumbent at the ask

    @property
    def done(self) -> bool:
        return self._exhausted

    def _incumbent(self) -> Evaluated | None:
        return self.archive.best(HIGH_FIDELITY, self.repairer.budget_bytes)

    def _center(self) -> Genome | None:
        ranked = sorted((e for e in self.archive.at(HIGH_FIDELITY)
                         if e.ok and e.ask.genome is not None and e.predicted_peak_bytes <= self.repairer.budget_bytes),
                        key=lambda e: -e.objective)
        if not ranked:
            return None
        if not self.state.restart and self.centers:
            best = ranked[0].ask.genome
            if best is not None and best != self.centers[-1]:
                self.centers.append(best)  # the incumbent moved: follow it
            return self.centers[-1]
        for e in ranked:  # first centre, or a restart: the best plan not used as a centre yet
            if e.ask.genome not in self.centers:
                assert e.ask.genome is not None
                self.centers.append(e.ask.genome)
                return e.ask.genome
        return ranked[0].ask.genome

    def ask(self, n: int) -> list[Ask]:
        if self.state.restart:
            log.info(f"trust-region: length {self.state.length:.3f} < {self.state.length_min}; restarting")
            self.state = replace(TrustRegionState(), restart=True)
        center = self._center()
        self.state = replace(self.state, restart=False)
        if center is None:
            log.info("trust-region: no feasible high result to centre on; stage ends")
            self._exhausted = True
            return []
        incumbent = self._incumbent()
        best_before = incumbent.objective if incumbent else None
        candidates: list[Genome] = []
        for _ in range(self.n_candidates * 4):
            if len(candidates) >= self.n_candidates:
                break
            genome = self.repairer.repair(perturb(center, self.state.length, self.codec, self.rng))
            if (genome not in candidates and genome not in self._in_flight
                    and not self.archive.evaluated(genome, HIGH_FIDELITY)):
                candidates.append(genome)
        if not candidates:
            log.info("trust-region: no unexplored plan around the incumbent; stage ends")
            self._exhausted = True
            return []
        k = min(n, self.batch_size, len(candidates))
        if self.model.fit(observations(self.archive)):
            chosen = [candidates[i] for i in self.model.thompson(candidates, k, self.rng, HIGH)]
        else:
            chosen = [candidates[int(i)] for i in self.rng.choice(len(candidates), k, replace=False)]
        self._in_flight.update((g, best_before) for g in chosen)
        return [Ask(plan=self.codec.decode(g), fidelity=HIGH_FIDELITY, genome=g) for g in chosen]

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        """One state update per told batch: a success when its best result beats the incumbent of
        the time it was asked (asynchronous workers tell one result at a time)."""
        befores = [self._in_flight.pop(e.ask.genome, None) for e in evaluated if e.ask.genome is not None]
        best_new = max((e.objective for e in evaluated if e.predicted_peak_bytes <= self.repairer.budget_bytes),
                       default=float("-inf"))
        known = [b for b in befores if b is not None]
        before = max(known) if known else None
        improved = math.isfinite(best_new) and (before is None or best_new > before + 1e-3 * abs(before))
        self.state = update_state(self.state, improved)
        log.info(f"trust-region: {'success' if improved else 'failure'}; length {self.state.length:.3f} "
                 f"(successes {self.state.success_count}, failures {self.state.failure_count})")
