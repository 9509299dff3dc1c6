"""Quantized-layer cache: each (model weights, layer, format, compute dtype, library versions) is quantized once.

HQQ's optimiser makes quantization the slow part of building a trial model (~12 s for the default
model's 210 linears on CPU); every later trial that uses the same layer in the same format reuses
it. Entries live in memory for the process and on disk (safetensors, one file a layer) under
``<cache>/qlayers/<weights fingerprint>/``, so later runs and other worker processes reuse them too;
the file name carries the quantizing library's and torch's versions, so an upgrade re-quantizes.
Entries are written to a temporary name and renamed, so a crash never leaves a torn file. Each
backend saves and restores its own layers (``state``/``restore``); backends that are not
``cacheable`` (dense layers) are built afresh every time.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from autoqra.domain import QuantFormat
from autoqra.trials.backends import backend_for, build_layer

if TYPE_CHECKING:
    import torch
    from torch import nn

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_LOG = logging.getLogger(__name__)

_Key = tuple[str, QuantFormat, str]


class LayerCache:
    """Quantized layer states keyed by layer name, format and compute dtype, for one set of weights."""

    def __init__(self, root: Path | None, fingerprint: str) -> None:
        self.folder = root / "qlayers" / fingerprint if root is not None else None
        self._memory: dict[_Key, dict[str, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def layer(self, name: str, linear: nn.Linear, fmt: QuantFormat, compute_dtype: str, device: str) -> nn.Module:
        """The quantized module for ``linear`` (reused when cached); non-cacheable formats are built afresh."""
        backend = backend_for(fmt)
        if not backend.cacheable:
            return build_layer(linear, fmt, compute_dtype, device)
        key = (name, fmt, compute_dtype)
        state = self._memory.get(key)
        if state is None:
            state = self._read(key)
        if state is not None:
            self.hits += 1
            # restore may keep or modify what it is given: the stored entry must outlive this layer
            copies = {k: v.clone() for k, v in state.items()}
            return backend.restore(copies, fmt, linear.in_features, linear.out_features, compute_dtype, device)
        self.misses += 1
        layer = build_layer(linear, fmt, compute_dtype, device)
        state = backend.state(layer)
        self._memory[key] = state
        self._write(key, state)
        return layer

    def _path(self, key: _Key) -> Path | None:
        if self.folder is None:
            return None
        name, fmt, dtype = key
        tag = backend_for(fmt).version_tag()
        return self.folder / _SAFE.sub("_", f"{name}.{fmt.label}.{dtype}.{tag}.safetensors")

    def _read(self, key: _Key) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:  # a damaged entry is rebuilt, not trusted
            _LOG.warning("ignoring unreadable cache entry %s: %s", path.name, exc)
            return None
        self._memory[key] = state
        return state

    def _write(self, key: _Key, state: dict[str, torch.Tensor]) -> None:
        path = self._path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in state.items()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
