"""Contracts of the search loop: what a stage asks for, what it is told, and the shared archive.

A *stage* is an ask/tell optimizer (DESIGN.md §3): ``ask(n)`` proposes up to ``n`` trials (a plan
and a fidelity), ``tell(evaluated)`` hands back their results, ``done`` says it has nothing more to
ask. Stages never run trials: the pipeline owns the loop, runs the asks through an executor, writes
every result to the store and the archive, and only then tells the stage.

With a pool of workers the pipeline is asynchronous: it calls ``ask`` whenever a worker is free,
while earlier asks are still running, and tells each result as it ends. A stage therefore never
re-proposes a plan it has in flight, and may return ``[]`` while it waits for its in-flight trials
(an NSGA-II generation waits for all of its ``low`` trials before it promotes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autoqra.domain import Plan, TrialResult, TrialStatus
from autoqra.search.codec import Genome

LOW_FIDELITY = "low"
HIGH_FIDELITY = "high"
FINAL_FIDELITY = "final"  # the schedule a user trains with; the final selection runs it


@dataclass(frozen=True)
class Ask:
    """One trial a stage wants: a plan (and its genome when it lies in the space) at a fidelity."""

    plan: Plan
    fidelity: str
    genome: Genome | None = None


@dataclass(frozen=True)
class Evaluated:
    """A finished trial with the plan's predicted peak under the budget's training setup."""

    ask: Ask
    result: TrialResult
    predicted_peak_bytes: int
    stage: str

    @property
    def ok(self) -> bool:
        return self.result.status is TrialStatus.OK and self.result.objective is not None

    @property
    def objective(self) -> float:
        """The objective, ``-inf`` for a failed trial (it never wins a comparison)."""
        return float(self.result.objective) if self.ok else float("-inf")


class Stage(Protocol):
    name: str

    @property
    def done(self) -> bool: ...

    def ask(self, n: int) -> list[Ask]: ...

    def tell(self, evaluated: Sequence[Evaluated]) -> None: ...


@dataclass
class Archive:
    """Every evaluated trial of the run, in the order they were recorded."""

    items: list[Evaluated] = field(default_factory=list)

    def add(self, evaluated: Evaluated) -> None:
        self.items.append(evaluated)

    def at(self, fidelity: str) -> list[Evaluated]:
        return [e for e in self.items if e.ask.fidelity == fidelity]

    def evaluated(self, genome: Genome, fidelity: str) -> bool:
        return any(e.ask.genome == genome and e.ask.fidelity == fidelity for e in self.items)

    def best(self, fidelity: str, budget_bytes: int) -> Evaluated | None:
        """Best ok result at ``fidelity`` whose plan fits the budget (ties: less memory)."""
        fitting = [e for e in self.at(fidelity) if e.ok and e.predicted_peak_bytes <= budget_bytes]
        return max(fitting, key=lambda e: (e.objective, -e.predicted_peak_bytes), default=None)

    def objective_of(self, genome: Genome, fidelity: str) -> float | None:
        for e in reversed(self.items):
            if e.ask.genome == genome and e.ask.fidelity == fidelity:
                return e.objective
        return None
