"""bitsandbytes LLM.int8 (format ``int8``): ``bnb.nn.Linear8bitLt`` with int8 codes and a float32
scale per output row (``SCB``).

``SCB``/``CB`` sit on the weight until the first forward moves them to the layer's matmul ``state``.
In training mode the CPU forward is ``x @ dequantize().T + bias``; in eval mode bitsandbytes also
quantizes the input row-wise, so eval outputs differ from that by the activation rounding. PEFT
picks its bitsandbytes LoRA class only when the model carries ``is_loaded_in_8bit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoqra.domain import QuantFormat
from autoqra.trials.backends.base import Backend, cpu_copy, library_loaded, torch_dtype

if TYPE_CHECKING:
    import torch
    from torch import nn


def _row_scales(layer: nn.Module) -> torch.Tensor:
    scb = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
    if scb is None:
        raise RuntimeError("int8 layer has no row scales (SCB): it was never quantized")
    return scb


@dataclass(frozen=True)
class Bnb8(Backend):
    def build(self, linear: nn.Linear, fmt: QuantFormat, compute_dtype: str, device: str) -> nn.Module:
        import bitsandbytes as bnb
        import torch

        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    has_fp16_weights=False, device="meta")
        # Int8Params quantizes on the move to a real device
        layer.weight = bnb.nn.Int8Params(linear.weight.data.to(torch.float32), requires_grad=False,
                                         has_fp16_weights=False)
        if linear.bias is not None:
            layer.bias = torch.nn.Parameter(linear.bias.data.to(torch_dtype(compute_dtype)), requires_grad=False)
        return layer.to(device)

    def state(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        state = {"weight": cpu_copy(layer.weight.data), "SCB": cpu_copy(_row_scales(layer))}
        if layer.bias is not None:
            state["bias"] = cpu_copy(layer.bias.data)
        return state

    def restore(self, state: dict[str, torch.Tensor], fmt: QuantFormat, in_features: int, out_features: int,
                compute_dtype: str, device: str) -> nn.Module:
        import bitsandbytes as bnb
        import torch

        bias = state.get("bias")
        layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=bias is not None, has_fp16_weights=False,
                                    device="meta")
        # already int8: Int8Params only quantizes float data, so set the codes and scales as they were built
        layer.weight = bnb.nn.Int8Params(state["weight"].to(device), requires_grad=False, has_fp16_weights=False)
        layer.weight.CB = layer.weight.data
        layer.weight.SCB = state["SCB"].to(device)
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias.to(device), requires_grad=False)
        return layer

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        import bitsandbytes.functional as bnbf

        return bnbf.int8_vectorwise_dequant(layer.weight.data, _row_scales(layer)).float()

    def owns(self, module: nn.Module) -> bool:
        if not library_loaded("bitsandbytes"):
            return False
        import bitsandbytes as bnb

        return isinstance(module, bnb.nn.Linear8bitLt)

    def extra_tensors(self, module: nn.Module) -> list[torch.Tensor]:
        import torch

        holders = (module.weight, module.state)  # SCB/CB move from the weight to state on first forward
        values = (getattr(h, attr, None) for h in holders for attr in ("SCB", "CB"))
        return [v for v in values if isinstance(v, torch.Tensor)]


BACKEND = Bnb8(names=("int8",), peft_flag="is_loaded_in_8bit", library="bitsandbytes")
