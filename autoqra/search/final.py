"""Final selection: retrain the best plans found at the schedule a user trains with, keep the best.

A search ranks plans by ``high`` trials, a short schedule. ``FinalStage`` runs last: it takes the
best ``k`` distinct plans of the ``high`` results within the budget (ties: less memory) and asks a
``final`` trial of each. The chosen plan is then the best ``final`` result (see
:meth:`SearchPipeline._outcome`). ``final`` trials cost their training tokens like every other
trial; the pipeline reserves that cost from the start, so the earlier stages cannot spend it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from autoqra.search.stage import FINAL_FIDELITY, HIGH_FIDELITY, Archive, Ask, Evaluated


log = logging.getLogger(__name__)


class FinalStage:
    name = "final"

    def __init__(self, archive: Archive, k: int, budget_bytes: int) -> None:
        self.archive, self.k, self.budget_bytes = archive, k, budget_bytes
        self._queue: list[Ask] | None = None  # chosen at the first ask, after the earlier stages ended

    @property
    def done(self) -> bool:
        return self._queue is not None and not self._queue

    def candidates(self) -> list[Evaluated]:
        """The best ``k`` distinct plans at ``high`` within the budget, best first."""
        fitting = [e for e in self.archive.at(HIGH_FIDELITY) if e.ok and e.predicted_peak_bytes <= self.budget_bytes]
        fitting.sort(key=lambda e: (-e.objective, e.predicted_peak_bytes))
        out: list[Evaluated] = []
        for e in fitting:
            if len(out) < self.k and all(o.ask.plan != e.ask.plan for o in out):
                out.append(e)
        return out

    def ask(self, n: int) -> list[Ask]:
        if self._queue is None:
            chosen = self.candidates()
            self._queue = [Ask(plan=e.ask.plan, fidelity=FINAL_FIDELITY, genome=e.ask.genome)
                           for e in chosen if not self._ran(e)]
            log.info(f"final: retraining the best {len(chosen)} plan(s) at high at `final`; the best final result "
                     "is the chosen plan" if chosen else "final: no high result within the budget to retrain")
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def _ran(self, e: Evaluated) -> bool:
        return any(f.ask.plan == e.ask.plan for f in self.archive.at(FINAL_FIDELITY))

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        return None
