"""Stage 1: multi-fidelity NSGA-II (DEAP) over genomes, as an ask/tell state machine.

One generation:
1. *Offspring*: binary tournaments on (front, crowding), per-group crossover, importance-guided or
   coupled mutation, repair to the budget; duplicates of the population, of the pool and of anything
   already evaluated are dropped. Generation 0 is the warm start instead.
2. *Screening*: the performance model (a GP with uncertainty) ranks the pool by its upper confidence
   bound at high fidelity; the best ``population`` get ``low`` trials (all of them, before the model
   has data).
3. *Promotion* (successive halving): the best ``promote`` of those by their ``low`` result get
   ``high`` trials.
4. *Selection*: NSGA-II with constrained domination on (quality up, predicted peak down) over parents
   plus offspring. Quality is the ``high`` result where there is one, else the model's prediction at
   high fidelity given all data (else the ``low`` result shifted by the mean low-to-high gap).
   Infeasible or failed plans get penalised objectives ordered by their violation, which makes
   DEAP's plain domination Deb's constrained domination.

The stage stops starting generations once the next one would overrun its allotment of trial cost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoqra.search.codec import Genome, SearchCodec
from autoqra.search.operators import coupled_mutation, crossover, importance_mutation
from autoqra.search.pareto import front_indices, hypervolume
from autoqra.search.repair import Repairer
from autoqra.search.stage import HIGH_FIDELITY, LOW_FIDELITY, Archive, Ask, Evaluated
from autoqra.search.surrogate import HIGH, LOW, Observation, PerformanceModel
from autoqra.search.warm_start import warm_start

log = logging.getLogger(__name__)

_PENALTY = 1e18


@dataclass(frozen=True)
class EvolutionSettings:
    population: int = 8
    promote: int = 3  # high trials per generation (successive halving from `population` low trials)
    screen_factor: int = 4  # offspring pool = screen_factor x population, screened by the model
    crossover_prob: float = 0.9
    coupled_prob: float = 0.3  # else importance-guided mutation
    ucb_kappa: float = 1.0


def observations(archive: Archive) -> list[Observation]:
    return [Observation(e.ask.genome, HIGH if e.ask.fidelity == HIGH_FIDELITY else LOW, e.objective)
            for e in archive.items if e.ok and e.ask.genome is not None]


def _nsga2_select(values: Sequence[tuple[float, float]], k: int) -> list[int]:
    """Indices kept by DEAP's NSGA-II selection (non-dominated sort + crowding)."""
    from deap import base, tools

    class Fitness(base.Fitness):
        weights = (1.0, -1.0)

    class Individual:
        def __init__(self, index: int, value: tuple[float, float]) -> None:
            self.index = index
            self.fitness = Fitness(value)

    individuals = [Individual(i, v) for i, v in enumerate(values)]
    return [ind.index for ind in tools.selNSGA2(individuals, min(k, len(individuals)))]


def _front_ranks(values: Sequence[tuple[float, float]]) -> list[int]:
    remaining = list(range(len(values)))
    ranks = [0] * len(values)
    level = 0
    while remaining:
        front = [remaining[i] for i in front_indices([values[j] for j in remaining])]
        # front_indices keeps one of exact duplicates; give duplicates the same rank
        front_values = {values[i] for i in front}
        layer = [i for i in remaining if values[i] in front_values]
        for i in layer:
            ranks[i] = level
        taken = set(layer)
        remaining = [i for i in remaining if i not in taken]
        level += 1
    return ranks


class EvolutionStage:
    name = "nsga2"

    def __init__(self, *, codec: SearchCodec, repairer: Repairer, model: PerformanceModel, archive: Archive,
                 rng: np.random.Generator, settings: EvolutionSettings, costs: dict[str, float],
                 allotment: float, sensitivity: np.ndarray) -> None:
        self.codec, self.repairer, self.model, self.archive = codec, repairer, model, archive
        self.sensitivity = sensitivity
        self.rng, self.settings, self.costs, self.allotment = rng, settings, costs, allotment
        self.budget_bytes = repairer.budget_bytes
        self.population: list[Genome] = []
        self.generation = 0
        self.spent = 0.0
        self.hv_history: list[float] = []
        self.reference: tuple[float, float] | None = None
        self._phase = "idle"
        self._batch: list[Genome] = []
        self._queue: list[Ask] = []
        self._pending = 0
        self._finished = False

    # -- ask/tell ----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._finished and not self._queue and self._pending == 0

    def ask(self, n: int) -> list[Ask]:
        while not self._queue and self._pending == 0 and not self._finished:
            self._advance()
        out, self._queue = self._queue[:n], self._queue[n:]
        self._pending += len(out)
        return out

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        self._pending -= len(evaluated)
        self.spent += sum(self.costs[e.ask.fidelity] for e in evaluated)

    # -- the generation state machine -------------------------------------------------------------
    def _advance(self) -> None:
        s = self.settings
        if self._phase == "idle":
            if self.generation == 0:
                self._batch = self._generation_zero()
            else:
                cost = s.population * self.costs[LOW_FIDELITY] + s.promote * self.costs[HIGH_FIDELITY]
                affordable = self.spent + cost <= self.allotment + 1e-9
                self._batch = self._offspring() if affordable else []
                if not self._batch:
                    reason = "new plans" if affordable else "budget"
                    log.info(f"nsga2: no {reason} for generation {self.generation}; the stage ends")
            if not self._batch:
                self._finished = True
                return
            self._queue = [self._ask(g, LOW_FIDELITY) for g in self._batch]
            self._phase = "low"
        elif self._phase == "low":
            scored = [(self.archive.objective_of(g, LOW_FIDELITY), g) for g in self._batch]
            ranked = [g for obj, g in sorted(scored, key=lambda t: -t[0]) if obj is not None and math.isfinite(obj)]
            promoted = [g for g in ranked if not self.archive.evaluated(g, HIGH_FIDELITY)][: s.promote]
            self._queue = [self._ask(g, HIGH_FIDELITY) for g in promoted]
            self._phase = "high"
        else:
            self._select()
            self.generation += 1
            self._phase = "idle"

    def _generation_zero(self) -> list[Genome]:
        """The warm start, cut to what the allotment pays (its baselines come first) after the
        promotions; at least ``promote`` plans, so a small budget still runs one generation."""
        s = self.settings
        batch = warm_start(self.repairer, s.population, self.rng, self.sensitivity)
        affordable = int((self.allotment - s.promote * self.costs[HIGH_FIDELITY]) / self.costs[LOW_FIDELITY] + 1e-9)
        kept = batch[: max(affordable, s.promote, 1)]
        cut = "" if len(kept) == len(batch) else f" of {len(batch)}"
        log.info(f"nsga2: generation 0 is the warm start: {len(kept)} plans (prior plan, sequential and uniform "
                 f"plans that fit, placed-adapter plans, jittered prior plans){cut}")
        return kept

    def _ask(self, genome: Genome, fidelity: str) -> Ask:
        return Ask(plan=self.codec.decode(genome), fidelity=fidelity, genome=genome)

    # -- selection ---------------------------------------------------------------------------
    def _values(self, genomes: Sequence[Genome]) -> list[tuple[float, float]]:
        self.model.fit(observations(self.archive))
        pairs = [(self.archive.objective_of(g, LOW_FIDELITY), self.archive.objective_of(g, HIGH_FIDELITY))
                 for g in self.archive_genomes()]
        gaps = [h - lo for lo, h in pairs if lo is not None and h is not None and math.isfinite(lo) and math.isfinite(h)]
        gap = float(np.mean(gaps)) if gaps else 0.0
        need = [g for g in genomes if self.archive.objective_of(g, HIGH_FIDELITY) is None]
        predicted = dict(zip(need, self.model.predict(need, HIGH)[0], strict=True)) if need and self.model.ready else {}
        values = []
        for g in genomes:
            peak = float(self.codec.predicted_peak_bytes(g))
            quality = self.archive.objective_of(g, HIGH_FIDELITY)
            if quality is None:
                low = self.archive.objective_of(g, LOW_FIDELITY)
                quality = (float("-inf") if low is None or not math.isfinite(low)
                           else float(predicted[g]) if g in predicted else low + gap)
            violation = max(0.0, peak - self.budget_bytes)
            if not math.isfinite(quality) or violation > 0:
                values.append((-_PENALTY - violation, _PENALTY + violation))
            else:
                values.append((quality, peak))
        return values

    def archive_genomes(self) -> list[Genome]:
        seen: dict[Genome, None] = {}
        for e in self.archive.items:
            if e.ask.genome is not None:
                seen.setdefault(e.ask.genome, None)
        return list(seen)

    def _select(self) -> None:
        union = list(dict.fromkeys([*self.population, *self._batch]))
        values = self._values(union)
        keep = _nsga2_select(values, self.settings.population)
        self.population = [union[i] for i in keep]
        self._ranks = _front_ranks([values[i] for i in keep])
        # memory as a fraction of the budget, so the hypervolume reads in objective x budget units
        highs = [(e.objective, e.predicted_peak_bytes / self.budget_bytes) for e in self.archive.at(HIGH_FIDELITY)
                 if e.ok and e.predicted_peak_bytes <= self.budget_bytes]
        if highs and self.reference is None:  # fixed once, at the first generation with high results
            worst = min(q for q, _ in highs)
            self.reference = (worst - 0.05 * abs(worst) - 1e-9, 1.0)
        if self.reference is not None:
            self.hv_history.append(hypervolume(highs, self.reference))
        best = max((q for q, _ in highs), default=float("nan"))
        log.info(f"nsga2: generation {self.generation} selected {len(self.population)}; best high {best:.4f}; "
                 f"hypervolume {self.hv_history[-1] if self.hv_history else float('nan'):.4g}")

    # -- variation ---------------------------------------------------------------------------
    def _tournament(self) -> Genome:
        ranks = getattr(self, "_ranks", [0] * len(self.population))
        i, j = self.rng.integers(0, len(self.population), 2)
        if ranks[i] != ranks[j]:
            return self.population[i if ranks[i] < ranks[j] else j]
        return self.population[i if self.rng.random() < 0.5 else j]

    def _offspring(self) -> list[Genome]:
        s, codec, rng = self.settings, self.codec, self.rng
        importance = self.repairer.utility.importance
        pool: list[Genome] = []
        taken = set(self.population) | set(self.archive_genomes())
        target = s.population * s.screen_factor
        for _ in range(target * 20):
            if len(pool) >= target:
                break
            a, b = self._tournament(), self._tournament()
            children = crossover(a, b, rng) if rng.random() < s.crossover_prob else (a, b)
            for child in children:
                if rng.random() < s.coupled_prob:
                    child = coupled_mutation(child, importance, rng, self.repairer)
                else:
                    child = importance_mutation(child, importance, rng, codec)
                child = self.repairer.repair(child)
                if child not in taken and child not in pool:
                    pool.append(child)
        if len(pool) <= s.population:
            return pool
        self.model.fit(observations(self.archive))
        if not self.model.ready:
            return [pool[i] for i in rng.choice(len(pool), s.population, replace=False)]
        mean, std = self.model.predict(pool, HIGH)
        order = np.argsort(-(mean + s.ucb_kappa * std), kind="stable")
        return [pool[int(i)] for i in order[: s.population]]
