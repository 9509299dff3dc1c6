"""Search presets: how much search a run buys, in trial cost and in structure.

Trial cost is counted in *high-trial units*: a ``high`` trial costs 1, a ``low`` or ``final`` trial
the ratio of its training tokens (steps x batch x sequence x accumulation) to a ``high`` trial's.
A preset's ``max_cost`` is what the search stages spend; the final selection (``final_top`` plans
retrained at ``final``) comes on top, at its token cost. ``--max-trials`` sets the total of both, so
every strategy gets the same training compute.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from autoqra.errors import AutoQRAError
from autoqra.search.evolution import EvolutionSettings

FINAL = "final"  # the fidelity the final selection runs (autoqra.search.stage.FINAL_FIDELITY)
STRATEGIES = ("autoqra", "random", "uniform", "sequential", "optuna-nsga2", "optuna-tpe")


@dataclass(frozen=True)
class PriorSettings:
    calibration: int = 4
    seq_len: int = 64
    demand_batches: int = 2


@dataclass(frozen=True)
class SearchPreset:
    name: str
    max_cost: float  # trial cost of the search stages, in high-trial units (the final selection's comes on top)
    stage1_share: float  # of max_cost, for the evolutionary stage; the trust region gets the rest
    evolution: EvolutionSettings
    priors: PriorSettings
    tr_candidates: int = 256
    final_top: int = 0  # best plans at `high` (within the budget) retrained at `final`; the best final result is chosen

    def with_max_cost(self, max_cost: float) -> SearchPreset:
        if not max_cost > 0:
            raise AutoQRAError(f"--max-trials must be > 0, not {max_cost:g}")
        return replace(self, max_cost=float(max_cost))

    def with_final_top(self, k: int) -> SearchPreset:
        if k < 0:
            raise AutoQRAError(f"--final-top must be >= 0, not {k}")
        return replace(self, final_top=int(k))

    def final_cost(self, costs: dict[str, float]) -> float:
        """What the final selection costs, in high-trial units (0 for a space without ``final``)."""
        return self.final_top * costs[FINAL] if FINAL in costs else 0.0

    def with_trial_budget(self, total: float, costs: dict[str, float]) -> SearchPreset:
        """``--max-trials total``: the search stages get what the final selection leaves."""
        if not total > 0:
            raise AutoQRAError(f"--max-trials must be > 0, not {total:g}")
        reserve = self.final_cost(costs)
        if total - reserve < 1 - 1e-9:  # the search must pay at least one high trial
            raise AutoQRAError(f"--max-trials {total:g} does not leave the search one high trial after the final "
                               f"selection ({self.final_top} final trials x {costs[FINAL]:g} high-trial units = "
                               f"{reserve:g}): use --max-trials {reserve + 1:g} or more, or lower --final-top")
        return self.with_max_cost(total - reserve)

    def total_cost(self, costs: dict[str, float]) -> float:
        return self.max_cost + self.final_cost(costs)


PRESETS: dict[str, SearchPreset] = {
    # 12 high-trial units of search, then the best 2 plans retrained at `final` (on the default space
    # 2 x 8 units); timings on this CPU in docs/results.md
    "quick": SearchPreset("quick", max_cost=12.0, stage1_share=0.75,
                          evolution=EvolutionSettings(population=6, promote=3, screen_factor=4),
                          priors=PriorSettings(calibration=4, seq_len=64, demand_batches=2), final_top=2),
    "standard": SearchPreset("standard", max_cost=48.0, stage1_share=0.65,
                             evolution=EvolutionSettings(population=12, promote=4, screen_factor=6),
                             priors=PriorSettings(calibration=16, seq_len=128, demand_batches=4), final_top=3),
    # the paper's scale: population 20, successive halving to a quarter, ~100 high trials' compute
    "paper": SearchPreset("paper", max_cost=100.0, stage1_share=0.6,
                          evolution=EvolutionSettings(population=20, promote=5, screen_factor=8),
                          priors=PriorSettings(calibration=32, seq_len=256, demand_batches=8), final_top=4),
}


def preset(name: str) -> SearchPreset:
    if name not in PRESETS:
        raise AutoQRAError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    return PRESETS[name]


def parse_duration(text: str) -> float:
    """``30m``, ``1h``, ``90s``, ``1h30m`` or plain seconds -> seconds."""
    import re

    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", raw)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != raw.replace(" ", ""):
            raise AutoQRAError(f"--time-limit {text!r} is not understood; examples: 30m, 1h, 90s, 1h30m")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if not seconds > 0:
        raise AutoQRAError(f"--time-limit must be positive, not {text!r}")
    return seconds
