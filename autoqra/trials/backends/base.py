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
