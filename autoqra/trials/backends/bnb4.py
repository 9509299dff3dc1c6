"""bitsandbytes NF4 (format ``nf4``, with or without double-quantized absmax): ``bnb.nn.Linear4bit``.

The quantization statistics (absmax, code table, nested state) live in ``weight.quant_state``,
outside ``parameters()``. PEFT picks its bitsandbytes LoRA class only when the model carries
``is_loaded_in_4bit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoqra.domain import QuantFormat
from autoqra.trials.backends.base import Backend, cpu_copy, library_loaded, torch_dtype

if TYPE_CHECKING:
    import torch
    from torch import nn


def keep_gradients_on_cpu(layer: nn.Module) -> nn.Module:
    """Disable bitsandbytes' CPU inference repack (DESIGN.md §5, "bitsandbytes trap").

    bitsandbytes 0.50 on AVX512-BF16 CPUs repacks a Linear4bit's weight into an inference layout on
    its first no-grad eval forward, after which no gradient flows through the layer to its input.
    """
    layer.support_avx512bf16_for_cpu = False
    return layer


def _unpacked_weight(layer: nn.Module) -> torch.Tensor:
    if getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
        raise RuntimeError("NF4 layer was repacked for CPU inference; build it through the nf4 backend")
    return layer.weight.data


@dataclass(frozen=True)
class Bnb4(Backend):
    def build(self, linear: nn.Linear, fmt: QuantFormat, compute_dtype: str, device: str) -> nn.Module:
        import bitsandbytes as bnb
        import torch

        dtype = torch_dtype(compute_dtype)
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=dtype, quant_type="nf4", compress_statistics=fmt.double_quant,
                                  device="meta")
        # Params4bit quantizes on the move to a real device, from the fp32 weight
        layer.weight = bnb.nn.Params4bit(linear.weight.data.to(torch.float32), requires_grad=False,
                                         quant_type="nf4", compress_statistics=fmt.double_quant,
                                         blocksize=fmt.group_size)
        if linear.bias is not None:
            layer.bias = torch.nn.Parameter(linear.bias.data.to(dtype), requires_grad=False)
        return keep_gradients_on_cpu(layer.to(device))

    def state(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        state = {"weight": cpu_copy(_unpacked_weight(layer))}
        if layer.bias is not None:
            state["bias"] = cpu_copy(layer.bias.data)
        state.update({k: cpu_copy(v) for k, v in layer.weight.quant_state.as_dict(packed=True).items()})
        return state

    def restore(self, state: dict[str, torch.Tensor], fmt: QuantFormat, in_features: int, out_features: int,
                compute_dtype: str, device: str) -> nn.Module:
        import bitsandbytes as bnb
        import torch

        weight = state.pop("weight")
        bias = state.pop("bias", None)
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=bias is not None,
                                  compute_dtype=torch_dtype(compute_dtype), quant_type="nf4",
                                  compress_statistics=fmt.double_quant, device="meta")
        layer.weight = bnb.nn.Params4bit.from_prequantized(data=weight, quantized_stats=state,
                                                           requires_grad=False, device=device)
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias.to(device), requires_grad=False)
        return keep_gradients_on_cpu(layer)

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(_unpacked_weight(layer), layer.weight.quant_state).float()

    def owns(self, module: nn.Module) -> bool:
        if not library_loaded("bitsandbytes"):
            return False
        import bitsandbytes as bnb

        return isinstance(module, bnb.nn.Linear4bit)

    def extra_tensors(self, module: nn.Module) -> list[torch.Tensor]:
        import torch

        found: list[torch.Tensor] = []
        state = module.weight.quant_state
        while state is not None:  # the nested (double-quant) state holds the absmax of the absmax
            found += [v for v in vars(state).values() if isinstance(v, torch.Tensor)]
            state = state.state2
        return found


BACKEND = Bnb4(names=("nf4",), peft_flag="is_loaded_in_4bit", library="bitsandbytes")
