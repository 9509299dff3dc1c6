"""Unquantized layers (formats ``bf16``, ``fp16``, ``fp32``): the ``nn.Linear`` itself, frozen.

The format must be the compute dtype (a mixed-dtype matmul would fail at the first forward), or the
compute dtype is fp32: a trial that computes in fp32 on hardware without fast 16-bit kernels
(``execution_dtype``) rounds the weight to its format first, so the layer holds what the format
stores and only the arithmetic is wider. These layers are not cached: casting a weight is as cheap
as reading it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoqra.domain import QuantFormat
from autoqra.errors import FormatError
from autoqra.trials.backends.base import Backend, cpu_copy, torch_dtype

if TYPE_CHECKING:
    import torch
    from torch import nn


def _check_dtype(fmt: QuantFormat, compute_dtype: str) -> None:
    if fmt.name != compute_dtype and compute_dtype != "fp32":
        raise FormatError(
            f"unquantized format {fmt.name} differs from the compute dtype {compute_dtype}; "
            f"use {compute_dtype} for layers kept in full precision"
        )


@dataclass(frozen=True)
class Dense(Backend):
    def build(self, linear: nn.Linear, fmt: QuantFormat, compute_dtype: str, device: str) -> nn.Module:
        _check_dtype(fmt, compute_dtype)
        linear = linear.to(dtype=torch_dtype(fmt.name))  # the format's rounding, also when computing wider
        return linear.to(device=device, dtype=torch_dtype(compute_dtype)).requires_grad_(False)

    def state(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {k: cpu_copy(v) for k, v in layer.state_dict().items()}

    def restore(self, state: dict[str, torch.Tensor], fmt: QuantFormat, in_features: int, out_features: int,
                compute_dtype: str, device: str) -> nn.Module:
        import torch

        _check_dtype(fmt, compute_dtype)
        layer = torch.nn.Linear(in_features, out_features, bias="bias" in state, device="meta")
        layer.load_state_dict(state, assign=True)  # assign: take the saved tensors (and dtype) as they are
        return layer.to(device=device, dtype=torch_dtype(compute_dtype)).requires_grad_(False)

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        return layer.weight.data.float()

    def owns(self, module: nn.Module) -> bool:
        import torch

        # exact type: bitsandbytes' layers subclass nn.Linear and belong to their own backends
        return type(module) is torch.nn.Linear


BACKEND = Dense(names=("bf16", "fp16", "fp32"), cacheable=False)
