"""Repair: make a genome fit the memory budget by giving up the least prior utility per byte saved.

``repair`` lowers options (format and/or rank) one group at a time, each time taking the move whose
utility loss per byte saved is smallest (a move that saves bytes *and* gains utility goes first),
until the exact memory model says the plan fits. It always ends feasible, or raises
:class:`~autoqra.errors.InfeasibleBudget` stating the smallest peak any plan of the space reaches.
It never gives up the last LoRA adapter, and gives one to a plan that has none (at the group whose
adapter the prior values most): a plan with every rank 0 has nothing to train, and the trial refuses
it. Only when no plan with an adapter fits does it return one without.
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
        return self._repair(genome, () if keep is None else (keep,))

    def _repair(self, genome: Genome, frozen: tuple[int, ...]) -> Genome:
        """:meth:`repair` with the groups ``frozen`` left alone while the others pay, if they can."""
        codec = self.codec
        if codec.first_adapter_rank is not None and not codec.has_adapter(genome):
            return self._give_adapter(genome, frozen)
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
            score[list(frozen)] = np.inf
            _keep_last_adapter(codec, score, r, np.inf)
            best = int(np.argmin(score))
            if not np.isfinite(score.flat[best]):
                break  # every (movable) group at its cheapest option by the table
            g, rest = divmod(best, codec.n_formats * codec.n_ranks)
            current[g] = divmod(rest, codec.n_ranks)
            current = [(int(a), int(b)) for a, b in current]
            if self.fits(tuple(current)):
                return tuple(current)
        if frozen:
            return self._repair(genome, ())  # the other groups alone cannot pay for the kept ones
        # Only where the memory model is not additive over groups can the table's cheapest corner
        # still exceed the budget; the exact minimum (reachable, checked above) always fits.
        return codec.cheapest_genome

    def _give_adapter(self, genome: Genome, frozen: tuple[int, ...]) -> Genome:
        """``genome`` (which has no adapter) with the smallest adapter at one group, repaired; groups tried
        in order of the prior's value of that adapter, the ``frozen`` ones last (they keep their option
        while another group can take the adapter). Unchanged (repaired) if no such plan fits."""
        codec, util = self.codec, self.utility.table
        r1 = codec.first_adapter_rank
        assert r1 is not None
        gains = [util[g, f, r1] - util[g, f, r] for g, (f, r) in enumerate(genome)]
        for g in sorted(range(codec.n_groups), key=lambda g: (g in frozen, -gains[g])):
            cheapest = min(((f, r1) for f in range(codec.n_formats)),
                           key=lambda gene: codec.predicted_peak_bytes(genome[:g] + (gene,) + genome[g + 1:]))
            for gene in ((genome[g][0], r1), cheapest):
                repaired = self._repair(genome[:g] + (gene,) + genome[g + 1:], tuple({*frozen, g}))
                if self.fits(repaired) and codec.has_adapter(repaired):
                    return repaired
        return self._repair_without_adapter(genome)

    def _repair_without_adapter(self, genome: Genome) -> Genome:
        """Where no plan with an adapter fits: ``genome`` if it fits, else the cheapest plan (the trial
        refuses either: nothing within the budget trains)."""
        if self.fits(genome):
            return genome
        self.check_reachable()
        return self.codec.cheapest_genome

    def fill(self, genome: Genome) -> Genome:
        """Raise options while the plan still fits, best utility gain per extra byte first."""
        codec = self.codec
        cost, util = codec.cost_table, self.utility.table
        current = tuple(genome)
        if not self.fits(current) or not codec.has_adapter(current):
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
            _keep_last_adapter(codec, score, r, -np.inf)  # a move may trade rank for bits, not the last adapter
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


def _keep_last_adapter(codec: SearchCodec, score: np.ndarray, ranks: np.ndarray, barred: float) -> None:
    """Bar (score ``barred``) every rank-0 option of the one group that still trains an adapter, if only
    one does; ``ranks`` holds each group's rank index."""
    adapted = np.flatnonzero(~codec.zero_ranks[ranks])
    if len(adapted) == 1:
        score[adapted[0]][:, codec.zero_ranks] = barred
