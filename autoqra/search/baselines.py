"""Baseline strategies on the same harness (same evaluator, store and trial budget as ``autoqra``).

- ``random``: uniform random genomes made feasible by a prior-free repair; ``high`` trials.
- ``uniform``: the QLoRA reference (NF4 double-quant, r=16) and the uniform (format, rank) plans of
  the space that fit, richest first; ``high`` trials.
- ``sequential``: quantize-then-LoRA, the pipeline the paper argues against: bits from the
  sensitivity prior alone (no adapters considered), then the largest uniform rank that still fits;
  one plan per rank of the space, largest rank first; ``high`` trials.
- ``optuna-nsga2`` / ``optuna-tpe``: Optuna's multi-objective samplers over per-group categorical
  (format, rank) choices; a sampled plan over budget is repaired (prior-free) and the sampler is told
  the repaired plan's result; ``high`` trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autoqra.domain import Plan
from autoqra.errors import PlanError
from autoqra.search.codec import Genome, SearchCodec
from autoqra.search.repair import Repairer
from autoqra.search.stage import HIGH_FIDELITY, Archive, Ask, Evaluated
from autoqra.search.warm_start import sequential_genomes, uniform_that_fit
from autoqra.space.reference import qlora_plan


class ListStage:
    """Asks a fixed list of plans at ``high``, in order."""

    def __init__(self, name: str, asks: list[Ask]) -> None:
        self.name = name
        self._asks = asks

    @property
    def done(self) -> bool:
        return not self._asks

    def ask(self, n: int) -> list[Ask]:
        out, self._asks = self._asks[:n], self._asks[n:]
        return out

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        return None


def uniform_stage(codec: SearchCodec, budget_bytes: int) -> ListStage:
    asks: list[Ask] = []
    qlora = qlora_plan(codec.spec, codec.space.granularity)
    if codec.memory.total(qlora) <= budget_bytes:
        asks.append(Ask(plan=qlora, fidelity=HIGH_FIDELITY, genome=_genome_or_none(codec, qlora)))
    for genome in uniform_that_fit(codec, budget_bytes):
        plan = codec.decode(genome)
        if plan != qlora:
            asks.append(Ask(plan=plan, fidelity=HIGH_FIDELITY, genome=genome))
    return ListStage("uniform", asks)


def _genome_or_none(codec: SearchCodec, plan: Plan) -> Genome | None:
    try:
        return codec.encode(plan)
    except PlanError:  # a plan outside the space (e.g. NF4 in an HQQ-only space) has no genome
        return None


def sequential_stage(codec: SearchCodec, sensitivity: np.ndarray, budget_bytes: int) -> ListStage:
    """Bits from sensitivity alone, then one uniform rank; one plan per rank that fits."""
    return ListStage("sequential", [Ask(plan=codec.decode(g), fidelity=HIGH_FIDELITY, genome=g)
                                    for g in sequential_genomes(codec, sensitivity, budget_bytes)])


class RandomStage:
    name = "random"

    def __init__(self, codec: SearchCodec, repairer: Repairer, archive: Archive, rng: np.random.Generator) -> None:
        self.codec, self.repairer, self.archive, self.rng = codec, repairer, archive, rng
        self._exhausted = False
        self._in_flight: set[Genome] = set()

    @property
    def done(self) -> bool:
        return self._exhausted

    def ask(self, n: int) -> list[Ask]:
        out: list[Ask] = []
        for _ in range(1000 * n):
            if len(out) >= n:
                break
            genome = self.repairer.repair(self.codec.random(self.rng))
            if (not self.archive.evaluated(genome, HIGH_FIDELITY) and genome not in self._in_flight
                    and all(a.genome != genome for a in out)):
                out.append(Ask(plan=self.codec.decode(genome), fidelity=HIGH_FIDELITY, genome=genome))
        self._exhausted = not out and not self._in_flight
        self._in_flight.update(a.genome for a in out if a.genome is not None)
        return out

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        for e in evaluated:
            self._in_flight.discard(e.ask.genome)  # type: ignore[arg-type]


class OptunaStage:
    """An Optuna sampler driving the search (its own in-memory study; the ledger records the trials)."""

    def __init__(self, name: str, sampler: Any, codec: SearchCodec, repairer: Repairer, archive: Archive) -> None:
        import optuna

        self.name, self.codec, self.repairer, self.archive = name, codec, repairer, archive
        self.study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        self._open: dict[Genome, list[Any]] = {}
        self._labels = [fmt.label for fmt in codec.formats]

    @property
    def done(self) -> bool:
        return False

    def ask(self, n: int) -> list[Ask]:
        out: list[Ask] = []
        for _ in range(50 * n):
            if len(out) >= n:
                break
            trial = self.study.ask()
            genome = tuple(
                (self._labels.index(trial.suggest_categorical(f"{name}.format", self._labels)),
                 self.codec.ranks.index(trial.suggest_categorical(f"{name}.rank", list(self.codec.ranks))))
                for name, _ in self.codec.groups)
            repaired = self.repairer.repair(genome)
            known = self._known(repaired)
            if known is not None:  # already run: tell the sampler without spending a trial
                self._tell(trial, known)
                continue
            in_flight = repaired in self._open  # asked before and still running: told when it ends
            self._open.setdefault(repaired, []).append(trial)
            if not in_flight and all(a.genome != repaired for a in out):
                out.append(Ask(plan=self.codec.decode(repaired), fidelity=HIGH_FIDELITY, genome=repaired))
        return out

    def _known(self, genome: Genome) -> Evaluated | None:
        for e in reversed(self.archive.items):
            if e.ask.genome == genome and e.ask.fidelity == HIGH_FIDELITY:
                return e
        return None

    def _tell(self, trial: Any, evaluated: Evaluated) -> None:
        from optuna.trial import TrialState

        if evaluated.ok:
            self.study.tell(trial, [evaluated.objective, float(evaluated.predicted_peak_bytes)])
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        for e in evaluated:
            assert e.ask.genome is not None
            for trial in self._open.pop(e.ask.genome, []):
                self._tell(trial, e)


def optuna_stage(kind: str, codec: SearchCodec, repairer: Repairer, archive: Archive, seed: int,
                 population: int) -> OptunaStage:
    import optuna

    if kind == "optuna-nsga2":
        sampler: Any = optuna.samplers.NSGAIISampler(population_size=max(population, 2), seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(population, 2))
    return OptunaStage(kind, sampler, codec, repairer, archive)
