"""HQQ affine quantization (format ``hqq``, 1-8 bits): ``hqq.core.quantize.HQQLinear``.

Scale and zero are kept per group in the compute dtype, in the layer's ``meta`` dict; the bias is a
plain tensor attribute. PEFT wraps ``HQQLinear`` on its own (``HqqLoraLinear``), no model flag needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoqra.domain import QuantFormat
from autoqra.trials.backends.base import Backend, cpu_copy, library_loaded, torch_dtype

if TYPE_CHECKING:
    import torch
    from torch import nn


def _config(fmt: QuantFormat) -> dict:
    from hqq.core.quantize import BaseQuantizeConfig

    return BaseQuantizeConfig(nbits=fmt.bits, group_size=fmt.group_size, axis=1)


@dataclass(frozen=True)
class Hqq(Backend):
    def build(self, linear: nn.Linear, fmt: QuantFormat, compute_dtype: str, device: str) -> nn.Module:
        from hqq.core.quantize import HQQLinear

        layer = HQQLinear(linear, _config(fmt), compute_dtype=torch_dtype(compute_dtype), device=device,
                          del_orig=True)
        layer.W_q.requires_grad_(False)
        return layer

    def state(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        # HQQLinear.state_dict flattens W_q, meta and bias into tensors (non-tensor meta encoded as tensors)
        return {k: cpu_copy(v) for k, v in layer.state_dict().items()}

    def restore(self, state: dict[str, torch.Tensor], fmt: QuantFormat, in_features: int, out_features: int,
                compute_dtype: str, device: str) -> nn.Module:
        from hqq.core.quantize import HQQLinear

        layer = HQQLinear(None, _config(fmt), compute_dtype=torch_dtype(compute_dtype), device=device,
                          initialize=False)
        layer.load_state_dict(state)
        layer.W_q.requires_grad_(False)
        return layer

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        # HQQLinear's PyTorch forward is x @ dequantize().T + bias
        return layer.dequantize().float()

    def owns(self, module: nn.Module) -> bool:
        if not library_loaded("hqq"):
            return False
        from hqq.core.quantize import HQQLinear

        return isinstance(module, HQQLinear)

    def extra_tensors(self, module: nn.Module) -> list[torch.Tensor]:
        import torch

        found = [v for v in module.meta.values() if isinstance(v, torch.Tensor)]  # scale, zero
        if isinstance(module.bias, torch.Tensor):
            found.append(module.bias)
        return found


BACKEND = Hqq(names=("hqq",), library="hqq")
