"""Replace a model's block linears by real quantized layers, one backend per format.

The layers themselves come from ``autoqra.trials.backends`` (HQQ, bitsandbytes NF4 and int8, dense);
this module applies a plan to a model: block linears through the backends (or the layer cache),
everything else cast to the compute dtype, and the flags PEFT reads to pick its LoRA classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoqra.domain import Plan, QuantFormat
from autoqra.errors import PlanError
from autoqra.trials.backends import BACKENDS, TORCH_DTYPES, build_layer, torch_dtype

if TYPE_CHECKING:
    from torch import nn

    from autoqra.trials.layer_cache import LayerCache

__all__ = ["TORCH_DTYPES", "quantize_linear", "quantize_model", "torch_dtype"]


def quantize_linear(linear: nn.Linear, fmt: QuantFormat, compute_dtype: str, device: str) -> nn.Module:
    """A frozen module storing ``linear``'s weight in ``fmt`` through the real backend."""
    return build_layer(linear, fmt, compute_dtype, device)


def quantize_model(model: nn.Module, plan: Plan, compute_dtype: str, device: str = "cpu",
                   cache: LayerCache | None = None, storage_dtype: str | None = None) -> nn.Module:
    """Quantize ``model`` in place according to ``plan``; everything else goes to the compute dtype.

    Block linears are quantized from the weights as loaded (fp32 keeps full precision), or taken
    from ``cache`` when it holds them; embeddings, norms and the LM head are then cast to the compute
    dtype, after rounding to ``storage_dtype`` when one is given (a trial computing in fp32 for a
    16-bit setup: the weights the setup stores, wider arithmetic). All base weights end up frozen.
    """
    if compute_dtype not in TORCH_DTYPES:
        raise PlanError(f"compute dtype must be one of {TORCH_DTYPES}, not {compute_dtype!r}")
    if storage_dtype is not None and storage_dtype not in TORCH_DTYPES:
        raise PlanError(f"storage dtype must be one of {TORCH_DTYPES}, not {storage_dtype!r}")
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
    stored = torch_dtype(storage_dtype or compute_dtype)
    quantized_names = set(choices)
    for name, module in model.named_modules():
        if name in quantized_names or any(name.startswith(q + ".") for q in quantized_names):
            continue
        for param in module.parameters(recurse=False):
            param.data = param.data.to(dtype=stored).to(device=device, dtype=dtype)
            param.requires_grad_(False)
        for bname, buf in list(module.named_buffers(recurse=False)):
            module._buffers[bname] = buf.to(device)  # keeps its dtype (rotary inv_freq stays fp32)
    formats = {fmt.name for fmt, _ in choices.values()}
    # PEFT dispatches to its bitsandbytes LoRA classes only when the model carries these flags.
    for backend in BACKENDS:
        if backend.peft_flag is not None:
            setattr(model, backend.peft_flag, not formats.isdisjoint(backend.names))
    return model
