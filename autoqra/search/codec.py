"""Genomes: a plan as ladder positions, one (format index, rank index) pair per group.

The format ladder is the space's formats sorted by stored bytes on this model (smallest first); the
rank ladder is the space's ranks ascending. A genome is a tuple of ``(format_index, rank_index)``
pairs, one per group of the space's granularity, in model order: hashable, cheap to copy, and
decoded into a :class:`~autoqra.domain.Plan` keyed by exact module names.

Memory is the exact model of :mod:`autoqra.space.memory`. For fast repair the codec also keeps an
*additive table*: the change of the total when one group alone takes each option, measured from the
all-cheapest genome. It only guides choices; feasibility is always judged by the exact model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from autoqra.domain import Plan, PlanGroup, QuantFormat
from autoqra.errors import PlanError
from autoqra.space.memory import MemoryModel
from autoqra.space.model_spec import ModelSpec
from autoqra.space.search_space import SearchSpace

Gene = tuple[int, int]
Genome = tuple[Gene, ...]


@dataclass(eq=False)
class SearchCodec:
    """Encodes and decodes plans of one model and space; owns the exact memory model."""

    spec: ModelSpec
    space: SearchSpace
    memory: MemoryModel = field(init=False)

    def __post_init__(self) -> None:
        self.memory = MemoryModel(self.spec, self.space.setup)
        self.groups: tuple[tuple[str, tuple[str, ...]], ...] = self.spec.groups(self.space.granularity)
        self.formats: tuple[QuantFormat, ...] = self.space.ladder(self.spec)
        self.ranks: tuple[int, ...] = self.space.choices.ranks
        self._format_index = {fmt: i for i, fmt in enumerate(self.formats)}
        self._rank_index = {r: i for i, r in enumerate(self.ranks)}
        self._memory_cache: dict[Genome, int] = {}

    # -- sizes ------------------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def n_formats(self) -> int:
        return len(self.formats)

    @property
    def n_ranks(self) -> int:
        return len(self.ranks)

    def options(self) -> Iterable[Gene]:
        return ((f, r) for f in range(self.n_formats) for r in range(self.n_ranks))

    # -- plan <-> genome ---------------------------------------------------------------------
    def decode(self, genome: Genome) -> Plan:
        self.check(genome)
        groups = tuple(
            PlanGroup(name=name, modules=modules, format=self.formats[f], rank=self.ranks[r])
            for (name, modules), (f, r) in zip(self.groups, genome, strict=True)
        )
        return Plan(model=self.spec.name, granularity=self.space.granularity, groups=groups)

    def encode(self, plan: Plan) -> Genome:
        """The genome of ``plan``; a PlanError if it uses a choice outside this space."""
        if plan.granularity != self.space.granularity or len(plan.groups) != self.n_groups:
            raise PlanError(f"plan has {len(plan.groups)} {plan.granularity} groups; the space has "
                            f"{self.n_groups} {self.space.granularity} groups")
        genes = []
        for (name, modules), group in zip(self.groups, plan.groups, strict=True):
            if group.modules != modules:
                raise PlanError(f"plan group {group.name} does not hold the modules of {name}")
            if group.format not in self._format_index or group.rank not in self._rank_index:
                raise PlanError(f"plan group {group.name}: {group.format.label} r={group.rank} is not in the space")
            genes.append((self._format_index[group.format], self._rank_index[group.rank]))
        return tuple(genes)

    def check(self, genome: Genome) -> None:
        if len(genome) != self.n_groups:
            raise PlanError(f"genome has {len(genome)} genes, the space {self.n_groups} groups")
        for f, r in genome:
            if not (0 <= f < self.n_formats and 0 <= r < self.n_ranks):
                raise PlanError(f"gene ({f}, {r}) is outside the ladders ({self.n_formats} formats, {self.n_ranks} ranks)")

    def uniform(self, format_index: int, rank_index: int) -> Genome:
        return tuple((format_index, rank_index) for _ in range(self.n_groups))

    def random(self, rng: np.random.Generator) -> Genome:
        f = rng.integers(0, self.n_formats, self.n_groups)
        r = rng.integers(0, self.n_ranks, self.n_groups)
        return tuple((int(a), int(b)) for a, b in zip(f, r, strict=True))

    # -- memory ------------------------------------------------------------------------------
    def has_adapter(self, genome: Genome) -> bool:
        """Whether some group trains a LoRA adapter (a plan without one has nothing to fine-tune)."""
        return any(self.ranks[r] > 0 for _, r in genome)

    @cached_property
    def zero_ranks(self) -> np.ndarray:
        """Boolean mask over the rank ladder: True where the rank is 0 (no adapter)."""
        return np.array([rank == 0 for rank in self.ranks])

    @cached_property
    def first_adapter_rank(self) -> int | None:
        """Index of the smallest nonzero rank of the ladder (None: the space has only rank 0)."""
        return next((i for i, rank in enumerate(self.ranks) if rank > 0), None)

    def predicted_peak_bytes(self, genome: Genome) -> int:
        """Exact predicted peak training bytes (memoised: the search asks again and again)."""
        hit = self._memory_cache.get(genome)
        if hit is None:
            hit = self.memory.total(self.decode(genome))
            if len(self._memory_cache) < 200_000:
                self._memory_cache[genome] = hit
        return hit

    @cached_property
    def cost_table(self) -> np.ndarray:
        """``[group, format, rank]``: bytes each option adds over the group's cheapest option.

        Measured one group at a time from the genome where every group takes its own cheapest
        option; exact where the memory model is additive over groups (block granularity without
        gradient checkpointing), a guide elsewhere.
        """
        base = self.cheapest_genome
        base_total = self.predicted_peak_bytes(base)
        table = np.zeros((self.n_groups, self.n_formats, self.n_ranks), dtype=np.float64)
        for g in range(self.n_groups):
            for f, r in self.options():
                genome = base[:g] + ((f, r),) + base[g + 1:]
                table[g, f, r] = self.predicted_peak_bytes(genome) - base_total
        return table

    @cached_property
    def cheapest_genome(self) -> Genome:
        """The genome of least predicted peak memory, by coordinate descent on the exact model.

        Per group the cheapest option is not always the lowest format: a 16-bit layer without an
        adapter saves nothing for backward, while an HQQ layer keeps its input, so on activation-bound
        setups ``bf16 r=0`` can be cheaper than ``hqq2 r=0``.
        """
        genome = self.uniform(0, 0)
        best = self.predicted_peak_bytes(genome)
        improved = True
        while improved:
            improved = False
            for g in range(self.n_groups):
                for gene in self.options():
                    candidate = genome[:g] + (gene,) + genome[g + 1:]
                    total = self.predicted_peak_bytes(candidate)
                    if total < best:
                        genome, best, improved = candidate, total, True
        return genome

    @cached_property
    def min_bytes(self) -> int:
        return self.predicted_peak_bytes(self.cheapest_genome)

    @cached_property
    def max_bytes(self) -> int:
        """Peak of the most expensive genome by the additive table (every group at its costliest)."""
        table = self.cost_table
        flat = table.reshape(self.n_groups, -1).argmax(axis=1)
        genome = tuple((int(i // self.n_ranks), int(i % self.n_ranks)) for i in flat)
        return self.predicted_peak_bytes(genome)
