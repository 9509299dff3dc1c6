"""Replace a model's block linears by real quantized layers, one backend per format.

HQQ (``hqq``) and bitsandbytes (``nf4``, ``int8``) are the backends; PEFT recognises both layer
classes and wraps them with its own LoRA layers. Unquantized formats keep ``nn.Linear`` in that
dtype, which must be the compute dtype (a mixed-dtype matmul would fail at the first forward).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoqra.domain import Plan, QuantFormat
from autoqra.errors import FormatError, PlanError
from autoqra.space.formats import check_storable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from autoqra.trials.layer_cache import LayerCache

TORCH_DTYPES = ("fp32", "bf16", "fp16")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def quantize_linear(linear: nn.Linear, fmt: QuantFormat, compute_dtype: str, device: str) -> nn.Module:
    """A frozen module storing ``linear``'s weight in ``fmt`` through the real backend."""
    import torch

    check_storable(fmt, linear.out_features, linear.in_features)
    dtype = torch_dtype(compute_dtype)
    weight = linear.weight.data
    bias = linear.bias.data if linear.bias is not None else None
    if fmt.name == "hqq":
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        config = BaseQuantizeConfig(nbits=fmt.bits, group_size=fmt.group_size, axis=1)
        layer = HQQLinear(linear, config, compute_dtype=dtype, device=device, del_orig=True)
        layer.W_q.requires_grad_(False)
        return layer
    if fmt.name == "nf4":
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=bias is not None,
            compute_dtype=dtype,
            quant_type="nf4",
            compress_statistics=fmt.double_quant,
            device="meta",
        )
        layer.weight = bnb.nn.Params4bit(
            weight.to(torch.float32),
            requires_grad=False,
            quant_type="nf4",
            compress_statistics=fmt.double_quant,
            blocksize=fmt.group_size,
        )
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias.to(dtype), requires_grad=False)
        layer = layer.to(device)
        # bitsandbytes 0.50 on AVX512-BF16 CPUs repacks the weight into an inference layout on the
        # first no-grad forward, after which no gradient flows through the layer (DESIGN.md §5).
        layer.support_avx512bf16_for_cpu = False
        return layer
    if fmt.name == "int8":
        import bitsandbytes as bnb

        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=bias is not None, has_fp16_weights=False, device="meta"
        )
        layer.weight = bnb.nn.Int8Params(weight.to(torch.float32), requires_grad=False, has_fp16_weights=False)
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias.to(dtype), requires_grad=False)
        return layer.to(device)
    if fmt.name != compute_dtype:
        raise FormatError(
            f"unquantized format {fmt.name} differs from the compute dtype {compute_dtype}; "
            f"use {compute_dtype} for layers kept in full precision"
        )
    linear.to(device=device, dtype=dtype).requires_grad_(False)
    return linear


def quantize_model(model: nn.Module, plan: Plan, compute_dtype: str, device: str = "cpu",
                   cache: LayerCache | None = None) -> nn.Module:
    """Quantize ``model`` in place according to ``plan``; everything else goes to the compute dtype.

    Block linears are quantized from the weights as loaded (fp32 keeps full precision), or taken
    from ``cache`` when it holds them; embeddings, norms and the LM head are then cast to the compute
    dtype. All base weights end up frozen.
    """
    if compute_dtype not in TORCH_DTYPES:
        raise PlanError(f"compute dtype must be one of {TORCH_DTYPES}, not {compute_dtype!r}")
    modules = dict(model.named_modules())
    choices = plan.module_choices()
    for name, (fmt, _rank) in choices.items():
        if name not in modules:
            raise PlanError(f"plan names module {name!r}, which the model does not have")
        parent_name, _, child = name.rpartition(".")
        if cache is not None:
            replacement = cache.layer(name, modules[name], fmt, compute_dtype, device)
        else:
            replacement = quantize_linear(modules[name], fmt, compute_dtype, device)
        setattr(modules[parent_name], child, replacement)
    dtype = torch_dtype(compute_dtype)
    quantized_names = set(choices)
    for name, module in model.named_modules():
        if name in quantized_names or any(name.startswith(q + ".") for q in quantized_names):
            continue
        for param in module.parameters(recurse=False):
            param.data = param.data.to(device=device, dtype=dtype)
            param.requires_grad_(False)
        for bname, buf in list(module.named_buffers(recurse=False)):
            module._buffers[bname] = buf.to(device)  # keeps its dtype (rotary inv_freq stays fp32)
    formats = {fmt.name for fmt, _ in choices.values()}
    # PEFT dispatches to its bitsandbytes LoRA classes only when the model carries these flags.
    model.is_loaded_in_4bit = "nf4" in formats
    model.is_loaded_in_8bit = "int8" in formats
    return model
