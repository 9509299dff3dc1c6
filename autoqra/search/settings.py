"""Search presets: how much search a run buys, in trial cost and in structure.

Trial cost is counted in *high-trial units*: a ``high`` trial costs 1, a ``low`` trial the ratio of
its training tokens (steps x batch x sequence x accumulation) to a ``high`` trial's. ``--max-trials``
sets the total in these units, so every strategy gets the same training compute.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from autoqra.errors import AutoQRAError
from autoqra.search.evolution import EvolutionSettings

STRATEGIES = ("autoqra", "random", "uniform", "sequential", "optuna-nsga2", "optuna-tpe")


@dataclass(frozen=True)
class PriorSettings:
    calibration: int = 4
    seq_len: int = 64
    demand_batches: int = 2


@dataclass(frozen=True)
class SearchPreset:
    name: str
    max_cost: float  # total trial cost, in high-trial units
    stage1_share: float  # of max_cost, for the evolutionary stage; the trust region gets the rest
    evolution: EvolutionSettings
    priors: PriorSettings
    tr_candidates: int = 256

    def with_max_cost(self, max_cost: float) -> SearchPreset:
        if not max_cost > 0:
            raise AutoQRAError(f"--max-trials must be > 0, not {max_cost:g}")
        return replace(self, max_cost=float(max_cost))


PRESETS: dict[str, SearchPreset] = {
    # 12 low + 9 high trials; `make search` searched for 8.2 min on a 2-core CPU with a fresh cache
    "quick": SearchPreset("quick", max_cost=12.0, stage1_share=0.75,
                          evolution=EvolutionSettings(population=6, promote=3, screen_factor=4),
                          priors=PriorSettings(calibration=4, seq_len=64, demand_batches=2)),
    "standard": SearchPreset("standard", max_cost=48.0, stage1_share=0.65,
                             evolution=EvolutionSettings(population=12, promote=4, screen_factor=6),
                             priors=PriorSettings(calibration=16, seq_len=128, demand_batches=4)),
    # the paper's scale: population 20, successive halving to a quarter, ~100 high trials' compute
    "paper": SearchPreset("paper", max_cost=100.0, stage1_share=0.6,
                          evolution=EvolutionSettings(population=20, promote=5, screen_factor=8),
                          priors=PriorSettings(calibration=32, seq_len=256, demand_batches=8)),
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
