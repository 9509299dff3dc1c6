"""Final selection: retrain the best plans found at the schedule a user trains with, keep the best.

A search ranks plans by ``high`` trials, a short schedule. ``FinalStage`` runs last: it takes the
best ``k`` distinct plans of the ``high`` results within the budget (ties: less memory) and asks a
``final`` trial of each. The chosen plan is then the best ``final`` result (see
:meth:`SearchPipeline._outcome`). ``final`` trials cost their training tokens like every other
trial; the pipeline reserves that cost from the start, so the earlier stages cannot spend it.

*Baselines* (``autoqra`` passes its warm start's quantize-then-LoRA and uniform plans): with ``k >= 2``
the last slot goes to the best baseline plan not among the first ``k - 1`` by its ``high`` result, so
the search's chosen plan must beat that baseline at ``final``, on the same seed, whatever the shorter
``high`` schedule said. This is SMAC's incumbent rule (a challenger replaces the default configuration
only by beating it on the same seeds), applied once at the end. It costs no trial: the slot would
otherwise go to the k-th plan at ``high``, on the default space most often a near copy of the first
(docs/results-memory-v1.md, seed 0 of ``news``).

Only baselines the search trained at ``high`` qualify: every baseline gets a ``low`` trial in
generation 0, and one the low screen never promoted has lost on the search's own evidence (at 85% of
``qlora`` on ``news`` the slot went to such a plan, -5.03 at ``low``, and it lost at ``final`` by
0.245: 8 units spent on a known loser). With none qualifying, the slot goes to the ``k``-th plan at
``high``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from autoqra.search.stage import FINAL_FIDELITY, HIGH_FIDELITY, Archive, Ask, Evaluated

log = logging.getLogger(__name__)


class FinalStage:
    name = "final"

    def __init__(self, archive: Archive, k: int, budget_bytes: int, baselines: Sequence[Ask] = ()) -> None:
        self.archive, self.k, self.budget_bytes = archive, k, budget_bytes
        self.baselines = list(baselines)  # plans within the budget, in the order they were proposed
        self._queue: list[Ask] | None = None  # chosen at the first ask, after the earlier stages ended

    @property
    def done(self) -> bool:
        return self._queue is not None and not self._queue

    def best_at_high(self) -> list[Evaluated]:
        """The best ``k`` distinct plans at ``high`` within the budget, best first."""
        fitting = [e for e in self.archive.at(HIGH_FIDELITY) if e.ok and e.predicted_peak_bytes <= self.budget_bytes]
        fitting.sort(key=lambda e: (-e.objective, e.predicted_peak_bytes))
        out: list[Evaluated] = []
        for e in fitting:
            if len(out) < self.k and all(o.ask.plan != e.ask.plan for o in out):
                out.append(e)
        return out

    def candidates(self) -> tuple[list[Ask], str]:
        """The plans to retrain at ``final`` (the search's best first, a baseline last) and why, in words."""
        best = self.best_at_high()
        asks = [Ask(plan=e.ask.plan, fidelity=FINAL_FIDELITY, genome=e.ask.genome) for e in best]
        head = asks[: self.k - 1]
        retrained = {a.plan for a in head}
        others = [b for b in self.baselines if b.plan not in retrained]
        if not best or self.k < 2 or not others:
            return asks, f"the best {len(asks)} plan(s) at high"
        chosen = self.best_baseline(others)
        if chosen is None:
            return asks, (f"the best {len(asks)} plan(s) at high (no baseline outside them was promoted to "
                          "high: the low screen ruled them out)")
        baseline, value = chosen
        asks = [*head, Ask(plan=baseline.plan, fidelity=FINAL_FIDELITY, genome=baseline.genome)]
        return asks, (f"the best {len(head)} plan(s) at high and the best baseline plan not among them "
                      f"({baseline.plan.plan_hash[:8]}, {value:.4f} at high)")

    def best_baseline(self, baselines: Sequence[Ask]) -> tuple[Ask, float] | None:
        """The one with the best ``high`` result (the first on ties); None when none has one."""
        scored = [(self._objective(b, HIGH_FIDELITY), i) for i, b in enumerate(baselines)]
        scored = [(v, i) for v, i in scored if v is not None and math.isfinite(v)]
        if not scored:
            return None
        value, i = max(scored, key=lambda t: (t[0], -t[1]))
        return baselines[i], value

    def _objective(self, ask: Ask, fidelity: str) -> float | None:
        values = [e.objective for e in self.archive.at(fidelity) if e.ok and e.ask.plan == ask.plan]
        return max(values) if values else None

    def ask(self, n: int) -> list[Ask]:
        if self._queue is None:
            chosen, why = self.candidates()
            self._queue = [a for a in chosen if not self._ran(a)]
            log.info(f"final: retraining {why} at `final`; the best final result is the chosen plan" if chosen
                     else "final: no high result within the budget to retrain")
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def _ran(self, ask: Ask) -> bool:
        return any(f.ask.plan == ask.plan for f in self.archive.at(FINAL_FIDELITY))

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        return None
