"""The quantization backends, one module a format family, and the registry that dispatches to them.

Adding a backend: one module here exporting ``BACKEND`` (a :class:`Backend`), one line in
``BACKENDS`` below, its exact bytes in ``autoqra/space/formats.py`` and its name in
``autoqra.domain.FormatName``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoqra.domain import QuantFormat
from autoqra.errors import FormatError
from autoqra.space.formats import check_storable
from autoqra.trials.backends import bnb4, bnb8, dense, hqq
from autoqra.trials.backends.base import TORCH_DTYPES, Backend, dtype_note, execution_dtype, torch_dtype

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BACKENDS", "TORCH_DTYPES", "Backend", "backend_for", "backend_of", "build_layer", "dtype_note",
           "execution_dtype", "torch_dtype"]

BACKENDS: tuple[Backend, ...] = (
    hqq.BACKEND,
    bnb4.BACKEND,
    bnb8.BACKEND,
    dense.BACKEND,
)


def _by_name(backends: tuple[Backend, ...]) -> dict[str, Backend]:
    table: dict[str, Backend] = {}
    for backend in backends:
        for name in backend.names:
            if name in table:
                raise FormatError(f"format {name} is claimed by two backends")
            table[name] = backend
    return table


_BY_NAME = _by_name(BACKENDS)


def backend_for(fmt: QuantFormat) -> Backend:
    """The backend that builds layers in ``fmt``."""
    backend = _BY_NAME.get(fmt.name)
    if backend is None:
        raise FormatError(f"no backend builds format {fmt.name}")
    return backend


def backend_of(module: nn.Module) -> Backend | None:
    """The backend whose layer class ``module`` is, or None (e.g. a PEFT wrapper, an embedding)."""
    return next((b for b in BACKENDS if b.owns(module)), None)


def build_layer(linear: nn.Linear, fmt: QuantFormat, compute_dtype: str, device: str) -> nn.Module:
    """A frozen layer storing ``linear``'s weight in ``fmt`` through its backend (``linear`` may be consumed)."""
    check_storable(fmt, linear.out_features, linear.in_features)
    return backend_for(fmt).build(linear, fmt, compute_dtype, device)
