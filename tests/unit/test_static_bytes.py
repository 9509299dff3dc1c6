"""A tiny model quantized with a mixed plan through the real backends, wrapped by PEFT, stepped once
by each optimizer a space can name (torch AdamW, bitsandbytes 8-bit and paged 8-bit AdamW, built by
the trial code): its resident bytes equal the memory model's static prediction, the optimizer states
exactly."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from autoqra.domain import Plan, PlanGroup, QuantFormat
from autoqra.space.memory import MemoryModel, TrainingSetup
from autoqra.space.model_spec import spec_from_config
from autoqra.trials.footprint import measure_footprint
from autoqra.trials.lora import attach_lora
from autoqra.trials.quantize import quantize_model
from autoqra.trials.train import make_optimizer
from tests.conftest import tiny_config

MIXED = [
    (QuantFormat(name="hqq", bits=2), 8),
    (QuantFormat(name="hqq", bits=3), 0),
    (QuantFormat(name="nf4", bits=4, double_quant=True), 16),
    (QuantFormat(name="hqq", bits=4), 4),
    (QuantFormat(name="int8", bits=8), 8),
    (QuantFormat(name="nf4", bits=4), 2),
    (QuantFormat(name="hqq", bits=8, group_size=128), 12),
]


def mixed_plan(spec, compute: str) -> Plan:
    choices = MIXED + [(QuantFormat(name=compute, bits=32 if compute == "fp32" else 16), 6)]
    groups = []
    for i, (name, modules) in enumerate(spec.module_groups()):
        fmt, rank = choices[i % len(choices)]
        groups.append(PlanGroup(name=name, modules=modules, format=fmt, rank=rank))
    return Plan(model=spec.name, granularity="module", groups=tuple(groups))


def build_and_step(config, plan: Plan, compute: str, optimizer_name: str = "adamw"):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    quantize_model(model, plan, compute)
    model = attach_lora(model, plan)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(optimizer_name, params, 1e-3, 0.0)
    ids = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    return model, optimizer, loss


@pytest.mark.parametrize("compute", ["fp32", "bf16"])
def test_static_bytes_match_prediction(family, compute):
    check_static_bytes(family, compute, "adamw")


@pytest.mark.parametrize("optimizer_name", ["adamw8bit", "paged_adamw8bit"])
def test_8bit_optimizer_states_match_prediction(optimizer_name):
    check_static_bytes("llama", "bf16", optimizer_name)


def test_8bit_optimizer_keeps_8bit_states_for_large_adapters():
    """The mixed plan has adapters above and below bitsandbytes' 4096-element threshold: both kinds of
    state are exercised (uint8 codes with absmax, and fp32 for the small ones)."""
    config = tiny_config("llama")
    spec = spec_from_config(config, "llama")
    _, optimizer, _ = build_and_step(config, mixed_plan(spec, "bf16"), "bf16", "adamw8bit")
    dtypes = {state["state1"].dtype for state in optimizer.state.values()}
    assert dtypes == {torch.uint8, torch.float32}


def check_static_bytes(family: str, compute: str, optimizer_name: str) -> None:
    config = tiny_config(family)
    spec = spec_from_config(config, family)
    plan = mixed_plan(spec, compute)
    model, optimizer, loss = build_and_step(config, plan, compute, optimizer_name)
    assert torch.isfinite(loss)
    # only the adapters train: every parameter that received a gradient is a LoRA weight, and every
    # LoRA weight received one (rank-0 modules have none)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    lora = {n for n, p in model.named_parameters() if "lora_" in n}
    assert with_grad == lora and lora
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert_backend_classes(model, plan)

    measured = measure_footprint(model, optimizer)
    predicted = MemoryModel(spec, TrainingSetup(compute_dtype=compute, optimizer=optimizer_name)).estimate(plan)

    # adapters and their gradients, exactly
    assert measured.trainable_bytes == predicted.lora_params
    assert measured.grad_bytes == predicted.lora_grads
    assert measured.optimizer_bytes == predicted.optimizer_states
    weights = predicted.quantized_weights + predicted.unquantized + predicted.lora_params
    assert measured.model_bytes == weights  # exact: every backend tensor is accounted for
    assert measured.total == pytest.approx(predicted.static, rel=0.005)


def assert_backend_classes(model, plan: Plan) -> None:
    import bitsandbytes as bnb
    from hqq.core.quantize import HQQLinear

    modules = dict(model.base_model.model.named_modules())
    for name, (fmt, rank) in plan.module_choices().items():
        base = modules[name].base_layer if rank > 0 else modules[name]
        expected = {"hqq": HQQLinear, "nf4": bnb.nn.Linear4bit, "int8": bnb.nn.Linear8bitLt}.get(fmt.name, torch.nn.Linear)
        assert isinstance(base, expected), (name, type(base))
        assert hasattr(modules[name], "lora_A") == (rank > 0)
        if rank:
            assert modules[name].lora_A["default"].weight.shape[0] == rank
