"""The initial population: the baselines the search must not start below, the priors, and diversity.

1. *Prior plan*: start every group at its best option and let the repair lower the groups with the
   least importance per byte saved until the plan fits; then ``fill`` spends what is left.
2. *Sequential plans* (quantize-then-LoRA): bits from the sensitivity prior alone, then one uniform
   rank, for each rank of the space that fits (the ``sequential`` baseline's plans).
3. *Uniform plans that fit* and train adapters, richest first (the ``uniform`` baseline's plans).
4. *Placed-adapter plans*: for each format whose uniform plans fit only without adapters, that format
   everywhere and the smallest nonzero rank on as many groups as fit, those the prior utility gives the
   most adapter gain first. Where rank everywhere does not fit at a format, these keep the bits and
   place the adapters, as ``sequential`` cannot: at 85% of ``qlora`` on ``news`` HQQ-4 with rank 4 on
   the 16 blocks of largest demand beat the plans ``autoqra`` and Optuna TPE chose there at `final`,
   while the same rank on the last 16 blocks lost (``experiments/adapter_placement.py``).
5. *Jittered copies* of the prior plan (random one-step moves on a fifth of the groups), repaired,
   until the population is full; duplicates are never added.

Generation 0 holds all of 1-4 even when they outnumber the population (they are cheap ``low``
trials), cut only where the stage's allotment cannot pay them (see ``EvolutionStage``); selection then
keeps ``population`` of them.
"""

from __future__ import annotations

import numpy as np

from autoqra.search.codec import Genome, SearchCodec
from autoqra.search.operators import jitter
from autoqra.search.repair import Repairer
from autoqra.search.utility import PriorUtility, utility_from_scores


def prior_plan(repairer: Repairer) -> Genome:
    codec = repairer.codec
    top = codec.uniform(codec.n_formats - 1, codec.n_ranks - 1)
    return repairer.fill(repairer.repair(top))


def uniform_that_fit(codec: SearchCodec, budget_bytes: int) -> list[Genome]:
    """Uniform genomes within the budget, most expensive (richest) first."""
    fits = [codec.uniform(f, r) for f, r in codec.options() if codec.predicted_peak_bytes(codec.uniform(f, r)) <= budget_bytes]
    return sorted(fits, key=codec.predicted_peak_bytes, reverse=True)


def sequential_genomes(codec: SearchCodec, sensitivity: np.ndarray, budget_bytes: int) -> list[Genome]:
    """Quantize-then-LoRA: bits from sensitivity alone, then one uniform rank; one genome per rank that
    fits (largest rank first), ranks of 0 skipped (the pipeline needs LoRA)."""
    bits_only = utility_from_scores(codec, sensitivity, np.ones(codec.n_groups))
    # the rank-0 slice is -e(f), sensitivity alone; repeated over ranks it makes the utility flat in
    # rank, so repair and fill move formats only (quantize first, adapters are not considered)
    table = np.repeat(bits_only.table[:, :, :1], codec.n_ranks, axis=2)
    repairer = Repairer(codec, PriorUtility(table=table, importance=bits_only.importance, informative=True),
                        budget_bytes)
    out: list[Genome] = []
    for r in reversed(range(codec.n_ranks)):
        lowest = tuple((0, r) for _ in range(codec.n_groups))
        if codec.ranks[r] == 0 or not repairer.fits(lowest):
            continue
        genome = _fill_formats(repairer, lowest)
        if genome not in out:
            out.append(genome)
    return out


def _fill_formats(repairer: Repairer, genome: Genome) -> Genome:
    """Greedy: raise the format of the group with the best sensitivity gain per byte while it fits."""
    codec, util, cost = repairer.codec, repairer.utility.table, repairer.codec.cost_table
    current = list(genome)
    blocked: set[int] = set()
    while True:
        best, best_score = None, 0.0
        for g, (f, r) in enumerate(current):
            if g in blocked or f + 1 >= codec.n_formats:
                continue
            gain = util[g, f + 1, r] - util[g, f, r]
            extra = max(cost[g, f + 1, r] - cost[g, f, r], 1.0)
            if gain / extra > best_score:
                best, best_score = g, gain / extra
        if best is None:
            return tuple(current)
        f, r = current[best]
        current[best] = (f + 1, r)
        if not repairer.fits(tuple(current)):
            current[best] = (f, r)
            blocked.add(best)


def baseline_plans(codec: SearchCodec, sensitivity: np.ndarray, budget_bytes: int) -> list[Genome]:
    """The baselines' plans: the sequential plans, then the uniform plans with adapters that fit; no duplicates."""
    trainable = [g for g in uniform_that_fit(codec, budget_bytes) if any(codec.ranks[r] > 0 for _, r in g)]
    return list(dict.fromkeys([*sequential_genomes(codec, sensitivity, budget_bytes), *trainable]))


def placed_adapter_plans(repairer: Repairer) -> list[Genome]:
    """Item 4 of the module docstring: per format (ladder order) whose uniform plans fit without
    adapters but with none of the space's nonzero ranks, the format everywhere and the smallest
    nonzero rank on the groups of largest utility gain from it, as many as fit."""
    codec, util = repairer.codec, repairer.utility.table
    smallest = codec.first_adapter_rank
    if 0 not in codec.ranks or smallest is None:
        return []
    none = codec.ranks.index(0)
    out: list[Genome] = []
    for f in range(codec.n_formats):
        bare = codec.uniform(f, none)
        if not repairer.fits(bare) or any(repairer.fits(codec.uniform(f, r)) for r in range(codec.n_ranks) if r != none):
            continue
        genome = list(bare)
        # groups may differ in cost (module granularity), so one that does not fit is skipped, not the end
        for g in sorted(range(codec.n_groups), key=lambda g: (-(util[g, f, smallest] - util[g, f, none]), g)):
            genome[g] = (f, smallest)
            if not repairer.fits(tuple(genome)):
                genome[g] = (f, none)
        if codec.has_adapter(tuple(genome)):
            out.append(tuple(genome))
    return out


def baseline_genomes(repairer: Repairer, sensitivity: np.ndarray) -> list[Genome]:
    """The plans the search must not start below: the prior plan, then :func:`baseline_plans`, then
    :func:`placed_adapter_plans`; no duplicates."""
    baselines = baseline_plans(repairer.codec, sensitivity, repairer.budget_bytes)
    return list(dict.fromkeys([prior_plan(repairer), *baselines, *placed_adapter_plans(repairer)]))


def warm_start(repairer: Repairer, size: int, rng: np.random.Generator, sensitivity: np.ndarray) -> list[Genome]:
    """Generation 0: :func:`baseline_genomes`, then jittered copies of the prior plan up to ``size``."""
    codec = repairer.codec
    population = baseline_genomes(repairer, sensitivity)
    anchor = population[0]

    def add(genome: Genome) -> None:
        if genome not in population and len(population) < size:
            population.append(genome)

    attempts = 0
    while len(population) < size and attempts < 50 * size:
        attempts += 1
        add(repairer.repair(jitter(anchor, rng, codec)))
    while len(population) < size and attempts < 100 * size:  # tiny spaces: random feasible genomes
        attempts += 1
        add(repairer.repair(codec.random(rng)))
    return population
