"""Measure the bytes autograd keeps for backward during one training forward pass.

PyTorch's saved-tensor hooks see every tensor an autograd node saves; counting each storage once
(and skipping parameters and buffers, which cost nothing extra) gives the activation memory held at
the end of the forward pass, on any device. The memory model's activation terms are checked
against this on tiny models (``tests/unit/test_memory_activations.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def saved_activation_bytes(model: nn.Module, input_ids: torch.Tensor) -> int:
    """Bytes of distinct storages saved for backward by ``model(input_ids, labels=input_ids)``."""
    import torch

    resident = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in resident:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    return sum(saved.values())
