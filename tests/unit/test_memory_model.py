"""Properties of the peak-memory model: monotone in bits and ranks, sensible components, fast."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoqra.domain import Plan, PlanGroup, QuantFormat
from autoqra.errors import PlanError
from autoqra.space.memory import MemoryModel, TrainingSetup
from autoqra.space.model_spec import model_spec
from autoqra.space.search_space import uniform_plan

HQQ_BITS = (1, 2, 3, 4, 5, 6, 8)
RANKS = (0, 1, 4, 8, 16, 64)
SPEC = model_spec("smollm2-135m")
GROUPS = SPEC.block_groups()
MODELS = [
    MemoryModel(SPEC, TrainingSetup(batch_size=4, seq_len=128, compute_dtype="bf16")),
    MemoryModel(SPEC, TrainingSetup(batch_size=2, seq_len=256, compute_dtype="fp32", grad_checkpointing=True)),
    MemoryModel(SPEC, TrainingSetup(batch_size=1, seq_len=64, optimizer="adamw8bit")),
]


def make_plan(choices):
    return Plan(model=SPEC.name, granularity="block", groups=tuple(
        PlanGroup(name=name, modules=modules, format=QuantFormat(name="hqq", bits=b), rank=r)
        for (name, modules), (b, r) in zip(GROUPS, choices, strict=True)
    ))


choice = st.tuples(st.sampled_from(HQQ_BITS), st.sampled_from(RANKS))
plans = st.lists(choice, min_size=len(GROUPS), max_size=len(GROUPS))


@settings(max_examples=60, deadline=None)
@given(plans, st.integers(0, len(GROUPS) - 1), st.sampled_from(range(len(MODELS))))
def test_more_bits_never_cost_less(choices, index, model_index):
    memory = MODELS[model_index]
    bits, rank = choices[index]
    higher = [b for b in HQQ_BITS if b > bits]
    if not higher:
        return
    raised = list(choices)
    raised[index] = (higher[0], rank)
    before, after = memory.estimate(make_plan(choices)), memory.estimate(make_plan(raised))
    assert after.total >= before.total
    assert after.quantized_weights >= before.quantized_weights
    if bits < 5:  # 5, 6 and 8 bits are all stored one code per byte
        assert after.quantized_weights > before.quantized_weights


@settings(max_examples=60, deadline=None)
@given(plans, st.integers(0, len(GROUPS) - 1), st.sampled_from(range(len(MODELS))))
def test_higher_rank_costs_more(choices, index, model_index):
    memory = MODELS[model_index]
    bits, rank = choices[index]
    higher = [r for r in RANKS if r > rank]
    if not higher:
        return
    raised = list(choices)
    raised[index] = (bits, higher[0])
    before, after = memory.estimate(make_plan(choices)), memory.estimate(make_plan(raised))
    assert after.total > before.total
    assert after.lora_params > before.lora_params
    if memory.setup.optimizer == "adamw":
        # (bitsandbytes 8-bit states switch from fp32 to 8 bits once a tensor reaches 4096 elements,
        # so there a higher rank can cost fewer optimizer bytes; the total still grows)
        assert after.optimizer_states > before.optimizer_states


def test_uniform_ladder_is_monotone_and_components_scale():
    memory = MODELS[0]
    totals = [memory.total(uniform_plan(SPEC, QuantFormat(name="hqq", bits=b), 16)) for b in HQQ_BITS]
    assert totals == sorted(totals)
    small = memory.estimate(uniform_plan(SPEC, QuantFormat(name="hqq", bits=4), 16))
    big = MemoryModel(SPEC, dataclasses.replace(memory.setup, batch_size=8)).estimate(
        uniform_plan(SPEC, QuantFormat(name="hqq", bits=4), 16))
    assert big.static == small.static
    assert big.activations > 1.9 * small.activations - small.activations * 0.1
    assert big.logits == 2 * small.logits


def test_gradient_checkpointing_saves_activations():
    plan = uniform_plan(SPEC, QuantFormat(name="nf4", bits=4, double_quant=True), 16)
    setup = TrainingSetup(batch_size=8, seq_len=512)
    off = MemoryModel(SPEC, setup).estimate(plan)
    on = MemoryModel(SPEC, dataclasses.replace(setup, grad_checkpointing=True)).estimate(plan)
    assert on.activations < off.activations / 5
    assert on.static == off.static


def test_lora_and_optimizer_bytes_by_hand():
    # one 576x576 q_proj with r=8: A is 8x576, B is 576x8, fp32 adapters, AdamW two fp32 states + step
    spec = SPEC
    fmt = QuantFormat(name="hqq", bits=4)
    groups = tuple(PlanGroup(name=n, modules=m, format=fmt, rank=0) for n, m in spec.module_groups())
    q0 = "model.layers.0.self_attn.q_proj"
    groups = tuple(g.model_copy(update={"rank": 8}) if g.name == q0 else g for g in groups)
    plan = Plan(model=spec.name, granularity="module", groups=groups)
    b = MODELS[0].estimate(plan)
    assert b.lora_params == b.lora_grads == 4 * 8 * (576 + 576)
    assert b.optimizer_states == 2 * b.lora_params + 2 * 4


def test_unknown_module_is_plan_error():
    plan = uniform_plan(SPEC, QuantFormat(name="hqq", bits=4), 8)
    bad = plan.to_dict()
    bad["groups"][0]["modules"] = ["model.layers.0.self_attn.nope"]
    with pytest.raises(PlanError):
        MODELS[0].estimate(Plan.from_dict(bad))


def test_training_setup_validation():
    with pytest.raises(PlanError):
        TrainingSetup(batch_size=0)
    with pytest.raises(PlanError):
        TrainingSetup(optimizer="sgd")  # type: ignore[arg-type]


def test_the_backward_phases_never_add_up_only_the_larger_one_is_at_the_peak():
    # measured on an H200 (docs/memory-validation.md): the logits' backward and the blocks' backward
    # hold memory at different times; a small vocabulary moves the peak from the first to the second
    from transformers import LlamaConfig

    from autoqra.space.model_spec import spec_from_config

    setup = TrainingSetup(batch_size=4, seq_len=512, grad_checkpointing=True)
    for vocab, phase in ((32000, "logits"), (4096, "blocks")):
        config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=4, num_attention_heads=32,
                             num_key_value_heads=4, vocab_size=vocab, tie_word_embeddings=False)
        spec = spec_from_config(config, f"llama-v{vocab}")
        b = MemoryModel(spec, setup).estimate(uniform_plan(spec, QuantFormat(name="hqq", bits=4), 16))
        assert b.peak_phase == phase
        assert b.logits == 4 * 512 * vocab * 12  # fp32 log-softmax output, its incoming and outgoing gradients
        assert b.recompute > 0 and b.workspace > 0
        assert b.total == b.static + b.framework + b.activations + max(b.logits, b.recompute + b.workspace)
        without = MemoryModel(spec, dataclasses.replace(setup, grad_checkpointing=False)).estimate(
            uniform_plan(spec, QuantFormat(name="hqq", bits=4), 16))
        assert without.recompute == 0 and without.activations > b.activations
