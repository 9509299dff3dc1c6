"""Quantized-layer cache: each (model weights, layer, format, compute dtype) is quantized once.

HQQ's optimiser makes quantization the slow part of building a trial model (~12 s for the default
model's 210 linears on CPU); every later trial that uses the same layer in the same format reuses
it. Entries live in memory for the process and on disk (safetensors, one file a layer) under
``<cache>/qlayers/<weights fingerprint>/``, so later runs and other worker processes reuse them too.
Entries are written to a temporary name and renamed, so a crash never leaves a torn file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from autoqra.domain import QuantFormat
from autoqra.trials.quantize import quantize_linear, torch_dtype

if TYPE_CHECKING:
    import torch
    from torch import nn

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class LayerCache:
    """Quantized layer states keyed by layer name, format and compute dtype, for one set of weights."""

    def __init__(self, root: Path | None, fingerprint: str) -> None:
        self.folder = root / "qlayers" / fingerprint if root is not None else None
        self._memory: dict[tuple[str, QuantFormat, str], dict[str, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def layer(self, name: str, linear: nn.Linear, fmt: QuantFormat, compute_dtype: str, device: str) -> nn.Module:
        """The quantized module for ``linear`` (reused when cached); unquantized formats are not cached."""
        if not fmt.quantized:
            return quantize_linear(linear, fmt, compute_dtype, device)
        key = (name, fmt, compute_dtype)
        state = self._memory.get(key)
        if state is None:
            state = self._read(key)
        if state is not None:
            self.hits += 1
            return _from_state(state, fmt, linear.in_features, linear.out_features, compute_dtype, device)
        self.misses += 1
        layer = quantize_linear(linear, fmt, compute_dtype, device)
        state = _to_state(layer, fmt)
        self._memory[key] = state
        self._write(key, state)
        return layer

    def _path(self, key: tuple[str, QuantFormat, str]) -> Path | None:
        if self.folder is None:
            return None
        name, fmt, dtype = key
        return self.folder / _SAFE.sub("_", f"{name}.{fmt.label}.{dtype}.safetensors")

    def _read(self, key: tuple[str, QuantFormat, str]) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:  # a damaged entry is rebuilt, not trusted
            print(f"autoqra: ignoring unreadable cache entry {path.name}: {exc}")
            return None
        self._memory[key] = state
        return state

    def _write(self, key: tuple[str, QuantFormat, str], state: dict[str, torch.Tensor]) -> None:
        path = self._path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        os.close(fd)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _to_state(layer: nn.Module, fmt: QuantFormat) -> dict[str, torch.Tensor]:
    """All tensors needed to rebuild ``layer`` (CPU copies, safetensors-compatible)."""
    if fmt.name == "hqq":
        return {k: v.detach().cpu().clone() for k, v in layer.state_dict().items()}
    state = {"weight": layer.weight.data.detach().cpu().clone()}
    if layer.bias is not None:
        state["bias"] = layer.bias.data.detach().cpu().clone()
    if fmt.name == "nf4":
        state.update({k: v.cpu().clone() for k, v in layer.weight.quant_state.as_dict(packed=True).items()})
    else:  # int8
        state["SCB"] = layer.weight.SCB.detach().cpu().clone()
    return state


def _from_state(state: dict[str, torch.Tensor], fmt: QuantFormat, in_features: int, out_features: int,
                compute_dtype: str, device: str) -> nn.Module:
    import torch

    dtype = torch_dtype(compute_dtype)
    tensors = {k: v.clone() for k, v in state.items()}
    if fmt.name == "hqq":
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        config = BaseQuantizeConfig(nbits=fmt.bits, group_size=fmt.group_size, axis=1)
        layer = HQQLinear(None, config, compute_dtype=dtype, device=device, initialize=False)
        layer.load_state_dict(tensors)
        layer.W_q.requires_grad_(False)
        return layer
    import bitsandbytes as bnb

    weight = tensors.pop("weight")
    bias = tensors.pop("bias", None)
    if fmt.name == "nf4":
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=bias is not None, compute_dtype=dtype,
                                  quant_type="nf4", compress_statistics=fmt.double_quant, device="meta")
        layer.weight = bnb.nn.Params4bit.from_prequantized(data=weight, quantized_stats=tensors,
                                                           requires_grad=False, device=device)
        layer.support_avx512bf16_for_cpu = False  # see quantize.py: the CPU inference repack cuts gradients
    else:
        layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=bias is not None, has_fp16_weights=False,
                                    device="meta")
        layer.weight = bnb.nn.Int8Params(weight.to(device), requires_grad=False, has_fp16_weights=False)
        layer.weight.SCB = tensors["SCB"].to(device)
        layer.weight.CB = layer.weight.data
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias.to(device), requires_grad=False)
    return layer
