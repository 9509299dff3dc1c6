"""The adapters' initial values come from the trial's seed alone, drawn on the CPU generator and copied
to wherever the adapters live (a CUDA adapter cannot take a CPU generator: every GPU trial crashed on
that before), so a plan starts from the same adapters on every device."""

from __future__ import annotations

import math

import torch
from transformers import AutoModelForCausalLM

from autoqra.domain import QuantFormat
from autoqra.space.model_spec import spec_from_config
from autoqra.space.search_space import uniform_plan
from autoqra.trials.lora import attach_lora, init_default
from autoqra.trials.quantize import quantize_model
from tests.conftest import tiny_config


def adapted(seed: int):
    config = tiny_config("llama")
    spec = spec_from_config(config, "llama")
    plan = uniform_plan(spec, QuantFormat(name="hqq", bits=4), 8)
    model = attach_lora(quantize_model(AutoModelForCausalLM.from_config(config), plan, "fp32"), plan)
    done = init_default(model, torch.Generator().manual_seed(seed))
    return model, done, len(plan.module_choices())


def test_adapters_are_the_seeds_kaiming_draws_in_module_order_and_b_is_zero():
    model, done, adapted_layers = adapted(3)
    assert done == adapted_layers > 0
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            weight = module.lora_A["default"].weight
            expected = torch.empty(weight.shape)
            torch.nn.init.kaiming_uniform_(expected, a=math.sqrt(5), generator=generator)
            assert torch.equal(weight, expected)
            assert not module.lora_B["default"].weight.any()
    again, _, _ = adapted(3)
    other, _, _ = adapted(4)
    first, a, b = ([p for n, p in m.named_parameters() if "lora_A" in n] for m in (model, again, other))
    assert all(torch.equal(x, y) for x, y in zip(a, first, strict=True))
    assert not any(torch.equal(x, y) for x, y in zip(a, b, strict=True))
