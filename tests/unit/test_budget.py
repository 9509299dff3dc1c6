import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoqra.errors import BudgetError
from autoqra.space.budget import lora16_reference, parse_budget, qlora_reference, resolve
from autoqra.space.memory import MemoryModel, TrainingSetup
from autoqra.space.model_spec import model_spec

GIB = 2**30


@pytest.mark.parametrize("text, expected", [
    ("16GB", 16 * GIB), ("16GiB", 16 * GIB), ("16 gb", 16 * GIB), ("16G", 16 * GIB),
    ("16000MB", 16000 * 2**20), ("1.5TB", int(1.5 * 2**40)), ("17179869184", 16 * GIB),
    ("512MiB", 512 * 2**20), (" 80GB ", 80 * GIB),
])
def test_sizes(text, expected):
    b = parse_budget(text)
    assert b.kind == "bytes" and int(b.value) == expected


@pytest.mark.parametrize("text, kind, value", [
    ("qlora", "qlora", 1.0), ("QLoRA", "qlora", 1.0), ("4bits", "bits", 4.0), ("3.5 bits", "bits", 3.5),
    ("1bit", "bits", 1.0), ("80%", "percent", 0.8), ("100 %", "percent", 1.0),
])
def test_relative_budgets(text, kind, value):
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, pytest.approx(value))


@pytest.mark.parametrize("text", [
    "", "   ", "16XB", "GB", "-16GB", "16GB16", "0GB", "0%", "250%", "0bits", "40bits", "1e9", "inf", "nan",
    "16,000MB", "1000", "2PB", "qlora2", "%80", "4 bytes",
])
def test_malformed_and_out_of_range(text):
    with pytest.raises(BudgetError) as info:
        parse_budget(text)
    assert "\n" not in str(info.value) and str(info.value)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=30))
def test_arbitrary_text_parses_or_raises_budget_error(text):
    try:
        b = parse_budget(text)
    except BudgetError as exc:
        assert "\n" not in str(exc)
    else:
        assert b.kind in {"bytes", "bits", "qlora", "percent"} and b.value > 0


def test_references_resolve_to_printed_bytes():
    memory = MemoryModel(model_spec("smollm2-135m"), TrainingSetup(batch_size=8, seq_len=128))
    q = resolve(parse_budget("qlora"), memory)
    assert q.bytes == qlora_reference(memory) and f"{q.bytes:,}" in q.explanation
    p = resolve(parse_budget("80%"), memory)
    assert p.bytes == int(0.8 * lora16_reference(memory))
    four = resolve(parse_budget("4bits"), memory)
    eight = resolve(parse_budget("8bits"), memory)
    weights = memory.spec.params.block_linear_weights
    assert eight.bytes - four.bytes == weights * 4 // 8
    # NF4 with double quant stores ~4.13 bits per weight, so "qlora" is a little above "4bits"
    assert four.bytes < q.bytes < resolve(parse_budget("4.2bits"), memory).bytes
    assert lora16_reference(memory) > q.bytes
