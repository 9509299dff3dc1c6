"""Repair: make a genome fit the memory budget by giving up the least prior utility per byte saved.

``repair`` lowers options (format and/or rank) one group at a time, each time taking the move whose
utility loss per byte saved is smallest (a move that saves bytes *and* gains utility goes first),
until the exact memory model says the plan fits. It always ends feasible, or raises
:class:`~autoqra.errors.InfeasibleBudget` stating the smallest peak any plan of the space reaches.
``fill`` is the converse, used by the warm start: spend what the budget leaves on the moves that
buy the most utility per byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoqra.errors import InfeasibleBudget
from autoqra.search.codec import Genome, SearchCodec
from autoqra.search.utility import PriorUtility
from autoqra.space.budget import format_bytes


def infeasible_error(codec: SearchCodec, budget_bytes: int) -> InfeasibleBudget:
    minimum = codec.min_bytes
    return InfeasibleBudget(
        f"no plan of space {codec.space.name} fits the budget of {budget_bytes:,} bytes "
        f"({format_bytes(budget_bytes)}): the smallest reachable peak is {minimum:,} bytes "
        f"({format_bytes(minimum)}), for the plan with every group at its cheapest option; raise the budget, "
        f"or shrink the training setup (batch size, sequence length, gradient checkpointing)",
        minimum_bytes=minimum,
    )


@dataclass(frozen=True, eq=False)
class Repairer:
    codec: SearchCodec
    utility: PriorUtility
    budget_bytes: int

    def fits(self, genome: Genome) -> bool:
        return self.codec.predicted_peak_bytes(genome) <= self.budget_bytes

    def check_reachable(self) -> None:
        if self.codec.min_bytes > self.budget_bytes:
            raise infeasible_error(self.codec, self.budget_bytes)

    def repair(self, genome: Genome, keep: int | None = None) -> Genome:
        """A feasible genome close to ``genome`` (``genome`` itself when it fits).

        With ``keep``, that group's option is left alone while the others pay; if they cannot, the
        group is repaired too.
        """
        codec = self.codec
        if self.fits(genome):
            return genome
        self.check_reachable()
        cost, util = codec.cost_table, self.utility.table
        current = list(genome)
        groups = np.arange(codec.n_groups)
        for _ in range(codec.n_groups * codec.n_formats * codec.n_ranks):
            f, r = np.array([g[0] for g in current]), np.array([g[1] for g in current])
            saved = cost[groups, f, r][:, None, None] - cost
            loss = util[groups, f, r][:, None, None] - util
            score = np.where(saved > 0, loss / np.where(saved > 0, saved, 1.0), np.inf)
            if keep is not None:
                score[keep] = np.inf
            best = int(np.argmin(score))
            if not np.isfinite(score.flat[best]):
                break  # every (movable) group at its cheapest option by the table
            g, rest = divmod(best, codec.n_formats * codec.n_ranks)
            current[g] = divmod(rest, codec.n_ranks)
            current = [(int(a), int(b)) for a, b in current]
            if self.fits(tuple(current)):
                return tuple(current)
        if keep is not None:
            return self.repair(genome)  # the other groups alone cannot pay for the kept one
        # Only where the memory model is not additive over groups can the table's cheapest corner
        # still exceed the budget; the exact minimum (reachable, checked above) always fits.
        return codec.cheapest_genome

    def fill(self, genome: Genome) -> Genome:
        """Raise options while the plan still fits, best utility gain per extra byte first."""
        codec = self.codec
        cost, util = codec.cost_table, self.utility.table
        current = tuple(genome)
        if not self.fits(current):
            current = self.repair(current)
        groups = np.arange(codec.n_groups)
        rejected: set[tuple[int, int, int]] = set()
        for _ in range(codec.n_groups * codec.n_formats * codec.n_ranks * 2):
            f, r = np.array([g[0] for g in current]), np.array([g[1] for g in current])
            gain = util - util[groups, f, r][:, None, None]
            extra = cost - cost[groups, f, r][:, None, None]
            score = np.where(gain > 0, gain / np.maximum(extra, 1.0), -np.inf)
            for key in rejected:
                score[key] = -np.inf
            best = int(np.argmax(score))
            if not np.isfinite(score.flat[best]):
                return current
            g, rest = divmod(best, codec.n_formats * codec.n_ranks)
            fi, ri = divmod(rest, codec.n_ranks)
            candidate = current[:g] + ((int(fi), int(ri)),) + current[g + 1:]
            if self.fits(candidate):
                current = candidate
                rejected.clear()
            else:
                rejected.add((g, int(fi), int(ri)))
        return current
