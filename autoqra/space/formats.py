"""Exact storage bytes of one linear layer in each format, as the real backend stores it.

Every figure below was read off the backends' own tensors (hqq 0.2.8, bitsandbytes 0.50.2) and is
checked by ``tests/unit/test_formats_exact.py``, which quantizes real layers and counts every tensor
the backend keeps. Nothing is assumed from the nominal bit-width: HQQ 4-bit with group 64 and fp32
scale/zero costs 5 bits per weight, HQQ 5/6/8-bit store one code per byte, HQQ 3-bit packs ten codes
into an int32 and pads the group count to a multiple of ten.
"""

from __future__ import annotations

from autoqra.domain import QuantFormat
from autoqra.errors import FormatError

#: HQQ packing: bits -> (codes per storage word, bytes per storage word)
_HQQ_PACKING = {1: (8, 1), 2: (4, 1), 3: (10, 4), 4: (2, 1), 5: (1, 1), 6: (1, 1), 8: (1, 1)}
_NF4_CODEBOOK_BYTES = 16 * 4  # per-layer float32 NF4 code table (quant_state.code)
_DQ_NESTED_BLOCK = 256  # bitsandbytes blocksize of the double-quantized absmax
_DQ_CODEBOOK_BYTES = 256 * 4  # per-layer float32 dynamic map of the nested state
_DQ_OFFSET_BYTES = 4  # float32 scalar offset of the nested state

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def check_storable(fmt: QuantFormat, out_features: int, in_features: int) -> None:
    """Raise FormatError if the backend cannot store an ``out x in`` weight in ``fmt``."""
    numel = out_features * in_features
    if fmt.name == "hqq":
        assert fmt.group_size is not None
        if numel % fmt.group_size:
            raise FormatError(
                f"{fmt.label}: a {out_features}x{in_features} weight is not a multiple of group size {fmt.group_size}"
            )
        groups = numel // fmt.group_size
        per_word, _ = _HQQ_PACKING[fmt.bits]
        if fmt.bits != 3 and groups % per_word:
            raise FormatError(
                f"{fmt.label}: HQQ packs {per_word} groups per byte but a {out_features}x{in_features} "
                f"weight has {groups} groups of {fmt.group_size}"
            )


def weight_storage_bytes(fmt: QuantFormat, out_features: int, in_features: int, compute_bytes: int) -> int:
    """Bytes of every tensor the backend keeps for the weight (codes, scales, zeros, constants).

    ``compute_bytes`` is the element size of the compute dtype: HQQ stores scale and zero in it.
    The bias is not included (see :func:`bias_bytes`).
    """
    numel = out_features * in_features
    if fmt.name == "hqq":
        assert fmt.group_size is not None
        groups = numel // fmt.group_size
        per_word, word_bytes = _HQQ_PACKING[fmt.bits]
        code_rows = -(-groups // per_word)  # 3-bit pads the group count up to a multiple of 10
        codes = code_rows * fmt.group_size * word_bytes
        return codes + 2 * groups * compute_bytes  # scale + zero per group
    if fmt.name == "nf4":
        assert fmt.group_size is not None
        blocks = -(-numel // fmt.group_size)
        packed = (numel + 1) // 2
        if not fmt.double_quant:
            return packed + 4 * blocks + _NF4_CODEBOOK_BYTES
        nested = -(-blocks // _DQ_NESTED_BLOCK)
        return packed + blocks + 4 * nested + _DQ_OFFSET_BYTES + _DQ_CODEBOOK_BYTES + _NF4_CODEBOOK_BYTES
    if fmt.name == "int8":
        return numel + 4 * out_features  # int8 codes + float32 row scale (SCB)
    return numel * DTYPE_BYTES[fmt.name]


def bias_bytes(fmt: QuantFormat, out_features: int, has_bias: bool, compute_bytes: int) -> int:
    """Quantized layers keep the bias in the compute dtype; unquantized ones in their own dtype."""
    if not has_bias:
        return 0
    return out_features * (compute_bytes if fmt.quantized else DTYPE_BYTES[fmt.name])


def bits_per_weight(fmt: QuantFormat, out_features: int, in_features: int, compute_bytes: int) -> float:
    """Effective stored bits per weight, metadata included."""
    return 8 * weight_storage_bytes(fmt, out_features, in_features, compute_bytes) / (out_features * in_features)


def information_bits(fmt: QuantFormat, compute_bytes: int) -> float:
    """Bits per weight that describe the weight: code bits plus the per-group metadata (scale and
    zero, or absmax) spread over its group.

    Unlike :func:`bits_per_weight` it leaves out what carries no information about the weights --
    packing padding (HQQ-3 keeps ten 3-bit codes in 32 bits) and per-layer constants (the NF4 code
    tables) -- and it does not depend on the layer's shape. It ranks formats of equal nominal bits:
    NF4 with double-quantized absmax (block 64) holds 4.13 bits per weight, HQQ-4 with bf16 scale and
    zero per 64 weights 4.50 (on `news` HQQ-4 is the more accurate, docs/search.md).
    """
    if fmt.name == "hqq":
        assert fmt.group_size is not None
        return fmt.bits + 2 * 8 * compute_bytes / fmt.group_size
    if fmt.name == "nf4":
        assert fmt.group_size is not None
        if not fmt.double_quant:
            return 4 + 32 / fmt.group_size  # float32 absmax per block
        return 4 + 8 / fmt.group_size + 32 / (fmt.group_size * _DQ_NESTED_BLOCK)  # int8 absmax + nested fp32
    if fmt.name == "int8":
        return 8.0  # the float32 row scale is spread over a whole row: negligible
    return 8.0 * DTYPE_BYTES[fmt.name]
