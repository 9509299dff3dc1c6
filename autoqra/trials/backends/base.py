"""The contract every quantization backend module fulfils, and the helpers they share.

A backend owns one family of layer formats end to end: building its frozen layer from a float
``nn.Linear``, saving that layer to flat CPU tensors for the layer cache and restoring it, the fp32
weight the layer computes with, recognising its layer class, the tensors it keeps outside
``parameters()``/``buffers()``, and any CPU workaround its library needs. Heavy libraries (torch,
hqq, bitsandbytes) are imported inside the methods, never at module import time.
"""

from __future__ import annotations

import functools
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoqra.domain import QuantFormat

if TYPE_CHECKING:
    import torch
    from torch import nn

TORCH_DTYPES = ("fp32", "bf16", "fp16")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


@functools.cache
def execution_dtype(compute_dtype: str, device: str) -> str:
    """The dtype a trial computes in on ``device`` for a setup that computes in ``compute_dtype``.

    ``compute_dtype`` is what the user's setup (and the memory model) uses. A trial computes in it
    where the hardware has fast kernels for it, and otherwise in fp32, with the weights still
    rounded to ``compute_dtype`` first (``storage_dtype`` of ``quantize_model``): the same model, with
    wider arithmetic. Torch's bf16 matmul on a CPU without oneDNN's bf16 path (no AVX-512) is a scalar
    fallback, 71x slower than fp32 on a 2-core AVX2 EPYC (``experiments/dtype_speed.py``), where a
    `high` trial in bf16 ran over 12 minutes (fp32: about 100 s). On CUDA, bf16 needs compute capability 8.0 or newer.
    """
    import torch

    if compute_dtype == "fp32":
        return "fp32"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        fast = torch.cuda.is_bf16_supported() if compute_dtype == "bf16" else True
    else:
        # torch.ops.mkldnn._is_mkldnn_*_supported are what torch's own CPU autocast tests use to tell
        # whether oneDNN has the 16-bit path; torch has no public query for it
        check = torch.ops.mkldnn._is_mkldnn_bf16_supported if compute_dtype == "bf16" \
            else torch.ops.mkldnn._is_mkldnn_fp16_supported
        fast = torch.backends.mkldnn.is_available() and bool(check())
    return compute_dtype if fast else "fp32"


def dtype_note(compute_dtype: str, device: str) -> str:
    """``compute_dtype``, or how a trial on ``device`` computes instead of it, for progress output."""
    run = execution_dtype(compute_dtype, device)
    if run == compute_dtype:
        return compute_dtype
    return f"fp32 with {compute_dtype}-rounded weights (this {device.upper()} has no fast {compute_dtype} kernels)"


def library_loaded(name: str) -> bool:
    """Whether ``name`` is imported. No layer of a library's class can exist before the library is
    imported, so ``owns`` checks this first: a footprint walk over an HQQ-only model then never
    imports bitsandbytes (slow, and noisy on import)."""
    return name in sys.modules


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy that shares no storage with the layer (the cache outlives the layer)."""
    return tensor.detach().to("cpu", copy=True)


@functools.cache
def _installed_version(distribution: str) -> str:
    """The installed version, read once per process: the layer cache asks for every layer it reads or
    writes, and each metadata lookup scans the import path (~1 ms)."""
    from importlib.metadata import version

    return version(distribution)


@dataclass(frozen=True)
class Backend(ABC):
    """One quantization backend. Instances are immutable; each backend module exports ``BACKEND``."""

    names: tuple[str, ...]  # the FormatName values this backend builds
    cacheable: bool = True  # whether LayerCache keeps its layers (False: rebuilding is as cheap as reading)
    peft_flag: str | None = None  # model attribute PEFT reads before it picks its LoRA class for these layers
    library: str | None = None  # the distribution that quantizes (its version, with torch's, keys cached layers)

    def version_tag(self) -> str:
        """``hqq-0.2.8.torch-2.13.0``: the code a stored layer came from. A cached layer or prior measured
        with another version of the quantizing library is not reused."""
        return ".".join(f"{lib}-{_installed_version(lib)}" for lib in (*([self.library] if self.library else []), "torch"))

    @abstractmethod
    def build(self, linear: nn.Linear, fmt: QuantFormat, compute_dtype: str, device: str) -> nn.Module:
        """A frozen layer storing ``linear``'s weight in ``fmt`` (``linear`` may be consumed)."""

    @abstractmethod
    def state(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        """Every tensor needed to rebuild ``layer``: a flat dict of CPU copies (safetensors-compatible)."""

    @abstractmethod
    def restore(self, state: dict[str, torch.Tensor], fmt: QuantFormat, in_features: int, out_features: int,
                compute_dtype: str, device: str) -> nn.Module:
        """The layer ``state`` was taken from. It may keep and modify the given tensors: pass copies."""

    @abstractmethod
    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        """The float32 ``out x in`` weight ``layer``'s training forward multiplies by."""

    @abstractmethod
    def owns(self, module: nn.Module) -> bool:
        """Whether ``module`` is this backend's layer class."""

    def extra_tensors(self, module: nn.Module) -> list[torch.Tensor]:
        """Tensors ``module`` keeps outside ``parameters()`` and ``buffers()`` (none by default)."""
        return []
