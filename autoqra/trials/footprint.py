"""Measured bytes of a built model: every tensor it keeps, each storage counted once.

Used to check the memory model's static part against reality. Backends keep tensors outside
``parameters()``/``buffers()`` (HQQ's ``meta`` dict of scales and zeros, bitsandbytes' quant_state
absmax and code tables, int8 row scales); each backend lists its own (``extra_tensors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Footprint:
    model_bytes: int  # parameters, buffers and backend-side quantization tensors
    trainable_bytes: int  # trainable parameters (LoRA)
    grad_bytes: int
    optimizer_bytes: int

    @property
    def total(self) -> int:
        return self.model_bytes + self.grad_bytes + self.optimizer_bytes


class _Counter:
    def __init__(self) -> None:
        self.seen: set[int] = set()

    def add(self, tensor: Any) -> int:
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return 0
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.seen or storage.nbytes() == 0:
            return 0
        self.seen.add(key)
        return storage.nbytes()


def _backend_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Tensors a quantized layer keeps outside parameters() and buffers(), as its backend lists them."""
    from autoqra.trials.backends import backend_of

    backend = backend_of(module)
    return backend.extra_tensors(module) if backend is not None else []


def measure_footprint(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Footprint:
    counter = _Counter()
    model_bytes = 0
    trainable = 0
    for param in model.parameters():
        n = counter.add(param)
        model_bytes += n
        if param.requires_grad:
            trainable += n
    for buf in model.buffers():
        model_bytes += counter.add(buf)
    for module in model.modules():
        for tensor in _backend_tensors(module):
            model_bytes += counter.add(tensor)
    grads = sum(counter.add(p.grad) for p in model.parameters() if p.grad is not None)
    opt = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            opt += sum(counter.add(v) for v in state.values())
    return Footprint(model_bytes=model_bytes, trainable_bytes=trainable, grad_bytes=grads, optimizer_bytes=opt)
