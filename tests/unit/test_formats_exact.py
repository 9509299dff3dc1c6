"""The storage formulas equal the bytes the real backends keep, tensor by tensor."""

import pytest
import torch

from autoqra.domain import QuantFormat
from autoqra.errors import FormatError
from autoqra.space.formats import bits_per_weight, check_storable, weight_storage_bytes
from autoqra.trials.footprint import _backend_tensors
from autoqra.trials.quantize import quantize_linear

SHAPES = [(256, 512), (192, 576), (1536, 576)]


def kept_weight_bytes(layer: torch.nn.Module) -> int:
    """Bytes of every distinct storage the layer keeps for its weight (bias excluded)."""
    seen, total = set(), 0
    bias = getattr(layer, "bias", None)
    bias_ptr = bias.untyped_storage().data_ptr() if isinstance(bias, torch.Tensor) else None
    tensors = [p for n, p in layer.named_parameters() if n != "bias"] + list(layer.buffers()) + _backend_tensors(layer)
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() in seen or st.data_ptr() == bias_ptr:
            continue
        seen.add(st.data_ptr())
        total += st.nbytes()
    return total


FORMATS = [QuantFormat(name="hqq", bits=b, group_size=g) for b in (1, 2, 3, 4, 5, 6, 8) for g in (64, 128)] + [
    QuantFormat(name="nf4", bits=4),
    QuantFormat(name="nf4", bits=4, double_quant=True),
    QuantFormat(name="nf4", bits=4, group_size=128, double_quant=True),
    QuantFormat(name="int8", bits=8),
]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label)
@pytest.mark.parametrize("compute", ["fp32", "bf16"])
def test_backend_bytes_equal_formula(fmt, compute):
    gen = torch.Generator().manual_seed(0)
    for out_f, in_f in SHAPES:
        linear = torch.nn.Linear(in_f, out_f, bias=True)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(out_f, in_f, generator=gen) * 0.02)
        layer = quantize_linear(linear, fmt, compute, "cpu")
        compute_bytes = 4 if compute == "fp32" else 2
        assert kept_weight_bytes(layer) == weight_storage_bytes(fmt, out_f, in_f, compute_bytes), (out_f, in_f)


def test_measured_bits_per_weight_not_nominal():
    # DESIGN.md §5: HQQ 4-bit g64 with fp32 meta ~5.0 bits/weight, 8-bit ~9.0
    assert bits_per_weight(QuantFormat(name="hqq", bits=4), 256, 512, 4) == pytest.approx(5.0)
    assert bits_per_weight(QuantFormat(name="hqq", bits=8), 256, 512, 4) == pytest.approx(9.0)
    assert bits_per_weight(QuantFormat(name="hqq", bits=5), 256, 512, 2) == pytest.approx(8.5)
    nf4 = bits_per_weight(QuantFormat(name="nf4", bits=4), 4096, 4096, 2)
    nf4_dq = bits_per_weight(QuantFormat(name="nf4", bits=4, double_quant=True), 4096, 4096, 2)
    assert nf4 == pytest.approx(4.5, abs=1e-3) and nf4_dq == pytest.approx(4.127, abs=1e-3)


def test_unstorable_shapes_are_clear_errors():
    with pytest.raises(FormatError, match="group size"):
        check_storable(QuantFormat(name="hqq", bits=4, group_size=64), 10, 10)
    with pytest.raises(FormatError, match="packs 8 groups"):
        check_storable(QuantFormat(name="hqq", bits=1, group_size=64), 4, 64)  # 4 groups, 1-bit needs 8


def test_unquantized_bytes():
    assert weight_storage_bytes(QuantFormat(name="bf16", bits=16), 10, 20, 2) == 400
    assert weight_storage_bytes(QuantFormat(name="fp32", bits=32), 10, 20, 2) == 800
