"""Variation operators on genomes, all drawing from an explicit ``numpy.random.Generator``.

DEAP's own operators draw from Python's global ``random`` state, so they are written here (each
is a few lines) and DEAP is used for what it does well: non-dominated sorting and crowding.

- ``crossover``: per-group atomic uniform crossover; a group's (format, rank) pair moves as one,
  because the two are coupled (a rank compensates a format).
- ``importance_mutation``: moves groups one ladder step; an important group (high prior importance)
  is more likely to move up, an unimportant one down.
- ``coupled_mutation``: raises one group (by prior importance) and lets the repair pay for it
  elsewhere, so the plan stays at the budget instead of drifting below it.
Every operator returns a genome inside the ladders; callers repair for the budget.
"""

from __future__ import annotations

import numpy as np

from autoqra.search.codec import Gene, Genome, SearchCodec
from autoqra.search.repair import Repairer


def crossover(a: Genome, b: Genome, rng: np.random.Generator, swap: float = 0.5) -> tuple[Genome, Genome]:
    mask = rng.random(len(a)) < swap
    child1 = tuple(gb if m else ga for ga, gb, m in zip(a, b, mask, strict=True))
    child2 = tuple(ga if m else gb for ga, gb, m in zip(a, b, mask, strict=True))
    return child1, child2


def _step(gene: Gene, up: bool, codec: SearchCodec, rng: np.random.Generator) -> Gene:
    """One ladder step of the format or of the rank (chosen at random), clipped to the ladders."""
    f, r = gene
    delta = 1 if up else -1
    if codec.n_ranks == 1 or (codec.n_formats > 1 and rng.random() < 0.5):
        return (min(max(f + delta, 0), codec.n_formats - 1), r)
    return (f, min(max(r + delta, 0), codec.n_ranks - 1))


def importance_mutation(genome: Genome, importance: np.ndarray, rng: np.random.Generator,
                        codec: SearchCodec, rate: float | None = None) -> Genome:
    """Each group moves with probability ``rate`` (default 2/groups): up with probability
    ``importance / (1 + importance)`` (importance has mean 1), else down."""
    n = len(genome)
    rate = min(1.0, 2.0 / n) if rate is None else rate
    out = list(genome)
    moved = False
    for g in range(n):
        if rng.random() < rate:
            up = rng.random() < importance[g] / (1.0 + importance[g])
            out[g] = _step(out[g], up, codec, rng)
            moved = True
    if not moved:  # always change something
        g = int(rng.integers(n))
        out[g] = _step(out[g], bool(rng.random() < importance[g] / (1.0 + importance[g])), codec, rng)
    return tuple(out)


def coupled_mutation(genome: Genome, importance: np.ndarray, rng: np.random.Generator,
                     repairer: Repairer) -> Genome:
    """Raise one group chosen in proportion to importance; the repair lowers others to pay."""
    codec = repairer.codec
    p = importance / importance.sum()
    g = int(rng.choice(len(genome), p=p))
    raised = list(genome)
    raised[g] = _step(raised[g], True, codec, rng)
    return repairer.repair(tuple(raised), keep=g)


def jitter(genome: Genome, rng: np.random.Generator, codec: SearchCodec, rate: float = 0.2) -> Genome:
    """Random one-step moves on a fraction of the groups (warm-start diversity)."""
    out = list(genome)
    for g in range(len(out)):
        if rng.random() < rate:
            out[g] = _step(out[g], bool(rng.random() < 0.5), codec, rng)
    return tuple(out)
