"""The initial population: priors mapped to ladder positions, repaired to the budget, plus diversity.

1. *Prior plan*: start every group at its best option and let the repair lower the groups with the
   least importance per byte saved until the plan fits; then ``fill`` spends what is left.
2. *Uniform baselines that fit*: uniform (format, rank) genomes, richest first, each repaired.
3. *Jittered copies* of the prior plan (random one-step moves on a fifth of the groups), repaired,
   until the population is full; duplicates are never added.
"""

from __future__ import annotations

import numpy as np

from autoqra.search.codec import Genome, SearchCodec
from autoqra.search.operators import jitter
from autoqra.search.repair import Repairer


def prior_plan(repairer: Repairer) -> Genome:
    codec = repairer.codec
    top = codec.uniform(codec.n_formats - 1, codec.n_ranks - 1)
    return repairer.fill(repairer.repair(top))


def uniform_that_fit(codec: SearchCodec, budget_bytes: int) -> list[Genome]:
    """Uniform genomes within the budget, most expensive (richest) first."""
    fits = [codec.uniform(f, r) for f, r in codec.options() if codec.predicted_peak_bytes(codec.uniform(f, r)) <= budget_bytes]
    return sorted(fits, key=codec.predicted_peak_bytes, reverse=True)


def warm_start(repairer: Repairer, size: int, rng: np.random.Generator, uniform_share: float = 0.25) -> list[Genome]:
    codec = repairer.codec
    population: list[Genome] = []

    def add(genome: Genome) -> None:
        if genome not in population and len(population) < size:
            population.append(genome)

    anchor = prior_plan(repairer)
    add(anchor)
    for genome in uniform_that_fit(codec, repairer.budget_bytes)[: max(1, int(size * uniform_share))]:
        add(genome)
    attempts = 0
    while len(population) < size and attempts < 50 * size:
        attempts += 1
        add(repairer.repair(jitter(anchor, rng, codec)))
    while len(population) < size and attempts < 100 * size:  # tiny spaces: random feasible genomes
        attempts += 1
        add(repairer.repair(codec.random(rng)))
    return population
