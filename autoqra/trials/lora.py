"""LoRA adapters through PEFT: one LoraConfig whose rank_pattern is keyed by exact module names."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from autoqra.domain import Plan

if TYPE_CHECKING:
    import torch
    from torch import nn


def alpha_for(rank: int, alpha_ratio: float) -> float:
    """Default policy: alpha = 2 x rank (``alpha_ratio`` = 2)."""
    return alpha_ratio * rank


def lora_config(plan: Plan, alpha_ratio: float = 2.0, dropout: float = 0.0) -> Any:
    """A PEFT ``LoraConfig`` for ``plan``: modules with rank 0 get no adapter."""
    from peft import LoraConfig

    plan.check_trainable()
    ranks = {m: rank for m, (_fmt, rank) in plan.module_choices().items() if rank > 0}
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
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():  # PEFT calls a transformers API that v5 deprecates; not ours to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora_config(plan, alpha_ratio, dropout))


def init_default(model: nn.Module, generator: torch.Generator) -> int:
    """PEFT's default init (A Kaiming-uniform, B zero) drawn from ``generator``.

    PEFT draws A from torch's global generator; re-drawing it from an explicit one makes a trial
    reproducible from its seed alone, whatever ran before it in the process.
    """
    import torch

    done = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            weight = module.lora_A["default"].weight
            with torch.no_grad():
                # drawn on the generator's device (CPU) and copied: a CUDA adapter cannot take a CPU
                # generator, and the same seed then gives the same adapters on every device
                draw = torch.empty(weight.shape, dtype=weight.dtype, device=generator.device)
                torch.nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=generator)
                weight.copy_(draw)
                module.lora_B["default"].weight.zero_()
            done += 1
    return done


def dequantized_weight(base: nn.Module) -> torch.Tensor:
    """The float32 weight a base layer computes with, from the backend that built it."""
    from autoqra.trials.backends import backend_of

    backend = backend_of(base)
    if backend is None:
        raise TypeError(f"no quantization backend recognises a {type(base).__name__} base layer")
    return backend.dequantize(base)


def init_from_residuals(model: nn.Module, originals: dict[str, torch.Tensor]) -> int:
    """Quantization-aware adapter initialisation (one-shot LoftQ).

    For every adapted layer in ``originals`` (full-precision weights taken before quantization),
    set the adapter to the best rank-r approximation of the quantization residual W - Q(W), so that
    Q(W) + scaling * B @ A starts as close to W as rank r allows. PEFT's own ``loftq`` init only
    handles bitsandbytes and re-quantizes the model itself; this works on any backend here and uses
    the layers already built (and cached). Returns the number of layers initialised.
    """
    import torch

    done = 0
    for name, module in model.named_modules():
        key = name.removeprefix("base_model.model.")
        if key not in originals or not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        a = module.lora_A["default"].weight
        b = module.lora_B["default"].weight
        rank = a.shape[0]
        scaling = float(module.scaling["default"])
        residual = originals[key].float().to(a.device) - dequantized_weight(module.base_layer).to(a.device)
        # Full SVD: deterministic and free of RNG state (torch.svd_lowrank would draw from the global RNG).
        u, s, vh = torch.linalg.svd(residual, full_matrices=False)
        root = torch.sqrt(s[:rank]) / math.sqrt(scaling)
        with torch.no_grad():
            b.copy_((u[:, :rank] * root).to(b.dtype))
            a.copy_((root[:, None] * vh[:rank]).to(a.dtype))
        done += 1
    return done
