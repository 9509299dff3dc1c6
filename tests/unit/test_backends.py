"""The backend contract, checked on real HQQ and bitsandbytes layers for every format name.

Each backend builds a layer whose kept bytes equal the storage formula, saves and restores it
through the layer cache bit-identically, dequantizes to the weight its forward multiplies by, and
is the one backend that recognises its layer.
"""

import copy
import subprocess
import sys
from typing import get_args

import pytest
import torch

from autoqra.domain import FORMAT_BITS, FormatName, QuantFormat
from autoqra.errors import FormatError
from autoqra.space.formats import DTYPE_BYTES, bias_bytes, weight_storage_bytes
from autoqra.trials.backends import BACKENDS, backend_for, backend_of, build_layer, torch_dtype
from autoqra.trials.footprint import measure_footprint
from autoqra.trials.layer_cache import LayerCache
from autoqra.trials.lora import dequantized_weight

OUT, IN = 128, 256
QUANTIZED_COMPUTE = ("fp32", "bf16")


def formats_of(name: str) -> list[QuantFormat]:
    if name == "nf4":
        return [QuantFormat(name="nf4"), QuantFormat(name="nf4", double_quant=True)]
    return [QuantFormat(name=name, bits=bits) for bits in FORMAT_BITS[name]]


def all_cases() -> list[tuple[QuantFormat, str]]:
    """Every format of every FormatName, with each compute dtype it allows."""
    cases = []
    for name in get_args(FormatName):
        for fmt in formats_of(name):
            computes = QUANTIZED_COMPUTE if fmt.quantized else (fmt.name,)  # dense: only its own dtype
            cases += [(fmt, compute) for compute in computes]
    return cases


CASES = all_cases()
QUANTIZED_CASES = [(fmt, compute) for fmt, compute in CASES if fmt.quantized]
DENSE_CASES = [(fmt, compute) for fmt, compute in CASES if not fmt.quantized]


def case_id(case: tuple[QuantFormat, str]) -> str:
    return f"{case[0].label}-{case[1]}"


#: relative Frobenius error of dequantize vs the original N(0, 0.05^2) weight: bound (measured).
#: Zeros give exactly 1.0; 1-bit HQQ is worse than that here (1.047), so it also needs the cosine floor.
DEQUANT_ERROR = {
    ("hqq", 1): 1.15,  # measured 1.047 (cosine 0.479)
    ("hqq", 2): 0.50,  # 0.429
    ("hqq", 3): 0.22,  # 0.184
    ("hqq", 4): 0.10,  # 0.087
    ("hqq", 5): 0.05,  # 0.042
    ("hqq", 6): 0.025,  # 0.021
    ("hqq", 8): 0.009,  # 0.0050 fp32, 0.0069 bf16 (scale and zero stored in bf16)
    ("nf4", 4): 0.11,  # 0.092, with or without double quant
    ("int8", 8): 0.009,  # 0.0069
}
MIN_COSINE = 0.40


def make_linear(bias: bool) -> torch.nn.Linear:
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(IN, OUT, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(OUT, IN, generator=gen) * 0.05)
        if bias:
            linear.bias.copy_(torch.randn(OUT, generator=gen) * 0.1)
    return linear


def make_input(compute: str) -> torch.Tensor:
    return torch.randn(4, IN, generator=torch.Generator().manual_seed(1)).to(torch_dtype(compute))


def expected_bytes(fmt: QuantFormat, compute: str, bias: bool) -> int:
    compute_bytes = DTYPE_BYTES[compute]
    return weight_storage_bytes(fmt, OUT, IN, compute_bytes) + bias_bytes(fmt, OUT, bias, compute_bytes)


def forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x)


def test_every_format_name_has_exactly_one_backend():
    names = get_args(FormatName)
    for name in names:
        owners = [b for b in BACKENDS if name in b.names]
        assert len(owners) == 1, name
        assert backend_for(formats_of(name)[0]) is owners[0]
    assert sorted(n for b in BACKENDS for n in b.names) == sorted(names)  # no backend for an unknown name


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kept_bytes_equal_formula(case, bias):
    fmt, compute = case
    layer = build_layer(make_linear(bias), fmt, compute, "cpu")
    assert measure_footprint(layer).model_bytes == expected_bytes(fmt, compute, bias)
    forward(layer, make_input(compute))  # int8 moves its codes and scales to layer.state here
    assert measure_footprint(layer).model_bytes == expected_bytes(fmt, compute, bias)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", QUANTIZED_CASES, ids=case_id)
def test_cache_round_trip_is_bit_identical(tmp_path, case, bias):
    fmt, compute = case
    linear, x = make_linear(bias), make_input(compute)
    cache = LayerCache(tmp_path, "fp")
    built = cache.layer("m.l", copy.deepcopy(linear), fmt, compute, "cpu")
    from_memory = cache.layer("m.l", copy.deepcopy(linear), fmt, compute, "cpu")
    from_disk = LayerCache(tmp_path, "fp").layer("m.l", copy.deepcopy(linear), fmt, compute, "cpu")
    assert (cache.misses, cache.hits) == (1, 1) and len(list(tmp_path.rglob("*.safetensors"))) == 1
    backend = backend_for(fmt)
    reference = forward(built, x)
    for restored in (from_memory, from_disk):
        assert type(restored) is type(built)
        assert torch.equal(forward(restored, x), reference)
        assert torch.equal(backend.dequantize(restored), backend.dequantize(built))
        assert measure_footprint(restored).model_bytes == expected_bytes(fmt, compute, bias)


@pytest.mark.parametrize("fmt", [QuantFormat(name="hqq", bits=4, group_size=64), QuantFormat(name="nf4")],
                         ids=["hqq", "nf4"])
def test_a_layer_cached_by_another_library_version_is_not_reused(tmp_path, fmt):
    from importlib.metadata import version

    library = {"hqq": "hqq", "nf4": "bitsandbytes"}[fmt.name]
    LayerCache(tmp_path, "fp").layer("m.l", make_linear(True), fmt, "bf16", "cpu")
    (entry,) = tmp_path.rglob("*.safetensors")
    assert f"{library}-{version(library)}" in entry.name and f"torch-{version('torch')}".replace("+", "_") in entry.name
    # the same entry as an older release of the library would have written it
    entry.rename(entry.with_name(entry.name.replace(f"{library}-{version(library)}", f"{library}-0.0.1")))
    fresh = LayerCache(tmp_path, "fp")
    fresh.layer("m.l", make_linear(True), fmt, "bf16", "cpu")
    assert (fresh.misses, fresh.hits) == (1, 0) and len(list(tmp_path.rglob("*.safetensors"))) == 2


@pytest.mark.parametrize("case", DENSE_CASES, ids=case_id)
def test_dense_layers_round_trip_but_are_not_cached(tmp_path, case):
    fmt, compute = case
    linear, x = make_linear(True), make_input(compute)
    backend = backend_for(fmt)
    assert not backend.cacheable
    cache = LayerCache(tmp_path, "fp")
    built = cache.layer("m.l", copy.deepcopy(linear), fmt, compute, "cpu")
    assert (cache.misses, cache.hits) == (0, 0) and not list(tmp_path.rglob("*.safetensors"))
    restored = backend.restore(backend.state(built), fmt, IN, OUT, compute, "cpu")
    assert torch.equal(forward(restored, x), forward(built, x))
    assert not any(p.requires_grad for p in restored.parameters())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_dequantize_is_within_the_format_error(case):
    fmt, compute = case
    linear = make_linear(False)
    original = linear.weight.detach().clone()
    weight = backend_for(fmt).dequantize(build_layer(linear, fmt, compute, "cpu"))
    assert weight.dtype == torch.float32 and weight.shape == (OUT, IN)
    if not fmt.quantized:  # dense: the weight itself, up to the cast to its dtype
        assert torch.equal(weight, original.to(torch_dtype(compute)).float())
        return
    error = ((weight - original).norm() / original.norm()).item()
    cosine = torch.nn.functional.cosine_similarity(weight.flatten(), original.flatten(), dim=0).item()
    assert error <= DEQUANT_ERROR[(fmt.name, fmt.bits)], error
    assert cosine >= MIN_COSINE, cosine


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_multiplies_by_the_dequantized_weight(case, bias):
    """Training-mode forward (the one LoRA trains through) = x @ dequantize(layer).T + bias."""
    fmt, compute = case
    layer = build_layer(make_linear(bias), fmt, compute, "cpu")
    x = make_input(compute)
    before = dequantized_weight(layer)
    out = forward(layer, x).float()
    weight = dequantized_weight(layer)
    assert torch.equal(weight, before)  # int8 moved its state during the forward: still the same weight
    expected = x.float() @ weight.T
    if bias:
        expected += layer.bias.float()
    # fp32 is sharp (any other weight, even the unquantized one, is off by the format's error);
    # half precision differs by its own rounding (measured <= 2.9e-3)
    tolerance = 1e-5 if compute == "fp32" else 5e-3
    assert ((out - expected).norm() / expected.norm()).item() <= tolerance


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_backend_of_recognises_each_built_layer(case):
    fmt, compute = case
    layer = build_layer(make_linear(True), fmt, compute, "cpu")
    assert [b for b in BACKENDS if b.owns(layer)] == [backend_for(fmt)]
    assert backend_of(layer) is backend_for(fmt)


def test_backend_of_is_none_for_other_modules():
    assert backend_of(torch.nn.Embedding(4, 8)) is None
    assert backend_of(torch.nn.LayerNorm(8)) is None


@pytest.mark.parametrize("fmt_name, compute", [("fp32", "bf16"), ("fp16", "bf16"), ("bf16", "fp16")])
def test_dense_format_must_be_the_compute_dtype_or_narrower_than_fp32(fmt_name, compute):
    fmt = QuantFormat(name=fmt_name, bits=FORMAT_BITS[fmt_name][0])
    with pytest.raises(FormatError, match="differs from the compute dtype"):
        build_layer(make_linear(True), fmt, compute, "cpu")


@pytest.mark.parametrize("fmt_name", ["bf16", "fp16"])
def test_a_16_bit_dense_layer_computed_in_fp32_holds_the_16_bit_weights(fmt_name):
    """A trial on hardware without fast 16-bit kernels computes in fp32 (execution_dtype): the layer
    must still hold what the format stores, so only the arithmetic is wider."""
    fmt = QuantFormat(name=fmt_name, bits=16)
    linear = make_linear(True)
    original = linear.weight.detach().clone()
    layer = build_layer(copy.deepcopy(linear), fmt, "fp32", "cpu")
    assert layer.weight.dtype == torch.float32
    rounded = original.to(torch_dtype(fmt_name)).float()
    assert torch.equal(layer.weight, rounded) and not torch.equal(layer.weight, original)
    assert torch.equal(layer.bias, linear.bias.detach().to(torch_dtype(fmt_name)).float())



def _input_grad(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    x = x.clone().requires_grad_(True)
    layer(x).float().sum().backward()
    return x.grad


@pytest.mark.parametrize("double_quant", [False, True], ids=["nf4", "nf4-dq"])
def test_nf4_passes_input_gradients_after_a_no_grad_eval_forward(tmp_path, double_quant):
    """DESIGN.md §5: bitsandbytes' CPU inference repack would cut the input gradient for good."""
    fmt = QuantFormat(name="nf4", double_quant=double_quant)
    linear, x = make_linear(False), make_input("bf16")
    expected = _input_grad(build_layer(copy.deepcopy(linear), fmt, "bf16", "cpu"), x)
    assert expected is not None and expected.abs().sum() > 0
    cache = LayerCache(tmp_path, "fp")
    built = cache.layer("m.l", copy.deepcopy(linear), fmt, "bf16", "cpu")
    restored = cache.layer("m.l", copy.deepcopy(linear), fmt, "bf16", "cpu")  # the restore path too
    for layer in (built, restored):
        layer.eval()
        forward(layer, x)
        layer.train()
        assert torch.equal(_input_grad(layer, x), expected)


def test_importing_the_backends_does_not_import_torch():
    code = "import autoqra.trials.backends, sys; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
