"""LoRA adapters through PEFT: one LoraConfig whose rank_pattern is keyed by exact module names."""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from autoqra.domain import Plan
from autoqra.errors import PlanError

if TYPE_CHECKING:
    from torch import nn


def alpha_for(rank: int, alpha_ratio: float) -> float:
    """Default policy: alpha = 2 x rank (``alpha_ratio`` = 2)."""
    return alpha_ratio * rank


def lora_config(plan: Plan, alpha_ratio: float = 2.0, dropout: float = 0.0) -> Any:
    """A PEFT ``LoraConfig`` for ``plan``: modules with rank 0 get no adapter."""
    from peft import LoraConfig

    ranks = {m: rank for m, (_fmt, rank) in plan.module_choices().items() if rank > 0}
    if not ranks:
        raise PlanError("plan gives every module rank 0: there is nothing to train")
    base_rank = Counter(ranks.values()).most_common(1)[0][0]
    # PEFT matches pattern keys as regular expressions: escape so that "layers.1." never matches "layers.11."
    rank_pattern = {re.escape(m): r for m, r in ranks.items() if r != base_rank}
    alpha_pattern = {re.escape(m): alpha_for(r, alpha_ratio) for m, r in ranks.items() if r != base_rank}
    return LoraConfig(
        r=base_rank,
        lora_alpha=alpha_for(base_rank, alpha_ratio),
        lora_dropout=dropout,
        target_modules=sorted(ranks),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(model: nn.Module, plan: Plan, alpha_ratio: float = 2.0, dropout: float = 0.0) -> nn.Module:
    """Wrap ``model`` (already quantized) with PEFT LoRA adapters following ``plan``."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(plan, alpha_ratio, dropout))
