"""Trials on tiny in-process models of four families, and the CPU bitsandbytes trap."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from autoqra.domain import Fidelity, Plan, PlanGroup, QuantFormat, TrialStatus
from autoqra.space.model_spec import spec_from_config
from autoqra.trials.backends import execution_dtype, torch_dtype
from autoqra.trials.evaluator import Evaluator, EvaluatorConfig
from autoqra.trials.quantize import quantize_linear
from tests.conftest import tiny_config

VOCAB = 49152  # the embedded tokenizer's size, so the news task's token ids fit
FID = Fidelity(name="tiny", steps=4, batch_size=2, seq_len=32, eval_examples=4)
CHOICES = [
    (QuantFormat(name="hqq", bits=2), 8),
    (QuantFormat(name="nf4", bits=4, double_quant=True), 4),
    (QuantFormat(name="hqq", bits=4), 0),
    (QuantFormat(name="int8", bits=8), 16),
    (QuantFormat(name="bf16", bits=16), 2),
    (QuantFormat(name="hqq", bits=3), 6),
]


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    from autoqra.trials.models import embedded_default_folder

    return AutoTokenizer.from_pretrained(str(embedded_default_folder()))


def loader_for(family, tokenizer):
    config = tiny_config(family)
    config.vocab_size = VOCAB
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config)
    state = copy.deepcopy(base.state_dict())

    def load():
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(state)
        return model, tokenizer

    return load, spec_from_config(config, family)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "phi3"])
def test_mixed_plan_trains_only_adapters(family, tokenizer):
    load, spec = loader_for(family, tokenizer)
    groups = tuple(PlanGroup(name=n, modules=m, format=CHOICES[i % len(CHOICES)][0], rank=CHOICES[i % len(CHOICES)][1])
                   for i, (n, m) in enumerate(spec.module_groups()))
    plan = Plan(model=family, granularity="module", groups=groups)
    evaluator = Evaluator(EvaluatorConfig(model=family, cache_dir=None), model_loader=load)
    result = evaluator.evaluate(plan, FID, seed=1)
    assert result.status is TrialStatus.OK, result.error
    assert result.objective == pytest.approx(-result.metrics.eval_loss)
    assert len(result.train_losses) == FID.steps and result.measured_static_bytes > 0
    assert result.phases.train_s > 0 and result.seed == 1 and result.task == "news"


def test_divergence_is_a_result_not_an_exception(tokenizer):
    load, spec = loader_for("llama", tokenizer)
    groups = tuple(PlanGroup(name=n, modules=m, format=QuantFormat(name="bf16", bits=16), rank=8)
                   for n, m in spec.block_groups())
    plan = Plan(model="llama", granularity="block", groups=groups)
    evaluator = Evaluator(EvaluatorConfig(model="llama", learning_rate=1e30, warmup_ratio=0.0), model_loader=load)
    result = evaluator.evaluate(plan, FID.model_copy(update={"steps": 12}), seed=1)
    assert result.status is TrialStatus.DIVERGED and result.objective is None and result.error


def _input_grad(layer, x):
    layer.train()
    x = x.clone().requires_grad_(True)
    layer(x).float().sum().backward()
    return x.grad


def test_nf4_keeps_input_gradients_after_no_grad_eval():
    """DESIGN.md §5: on AVX512-BF16 CPUs bitsandbytes repacks a Linear4bit on its first no-grad eval
    forward into a layout whose matmul passes no gradient to its input. Our layers must not."""
    from bitsandbytes.functional import has_avx512bf16

    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(256, 128, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(128, 256, generator=gen) * 0.05)
    x = torch.randn(4, 256, generator=gen).to(torch.bfloat16)
    fresh = quantize_linear(copy.deepcopy(linear), QuantFormat(name="nf4"), "bf16", "cpu")
    expected = _input_grad(fresh, x)

    ours = quantize_linear(copy.deepcopy(linear), QuantFormat(name="nf4"), "bf16", "cpu")
    ours.eval()
    with torch.no_grad():
        ours(x)
    after = _input_grad(ours, x)
    assert after is not None and torch.equal(after, expected)

    if has_avx512bf16():  # this machine has the trap: show that an unprotected layer falls into it
        trapped = quantize_linear(copy.deepcopy(linear), QuantFormat(name="nf4"), "bf16", "cpu")
        trapped.support_avx512bf16_for_cpu = True
        trapped.eval()
        with torch.no_grad():
            trapped(x)
        lost = _input_grad(trapped, x)
        assert lost is None or not torch.allclose(lost.float(), expected.float())


def test_nf4_trains_as_well_after_an_evaluation(tokenizer):
    load, spec = loader_for("llama", tokenizer)
    plan = Plan(model="llama", granularity="block", groups=tuple(
        PlanGroup(name=n, modules=m, format=QuantFormat(name="nf4", bits=4), rank=8) for n, m in spec.block_groups()))
    from autoqra.trials.data import build_task
    from autoqra.trials.lora import attach_lora
    from autoqra.trials.quantize import quantize_model
    from autoqra.trials.train import TrainConfig, eval_loss, train

    data = build_task("news", tokenizer, 32, 4, train_rows=64)

    def run(evaluate_first: bool) -> float:
        model, _ = load()
        quantize_model(model, plan, "bf16")
        torch.manual_seed(0)
        model = attach_lora(model, plan)
        if evaluate_first:
            model.eval()
            eval_loss(model, data.eval_ids, data.eval_labels, 2, "cpu")
        outcome = train(model, data, TrainConfig(steps=6, batch_size=2), seed=0, device="cpu")
        assert outcome.status is TrialStatus.OK
        model.eval()
        return eval_loss(model, data.eval_ids, data.eval_labels, 2, "cpu")

    assert run(True) == pytest.approx(run(False), abs=1e-3)


def test_trials_reproduce_from_their_seed(tokenizer):
    load, spec = loader_for("llama", tokenizer)
    plan = Plan(model="llama", granularity="block", groups=tuple(
        PlanGroup(name=n, modules=m, format=QuantFormat(name="hqq", bits=4), rank=4) for n, m in spec.block_groups()))
    evaluator = Evaluator(EvaluatorConfig(model="llama"), model_loader=load)
    a = evaluator.evaluate(plan, FID, seed=21)
    torch.rand(1000)  # global RNG state must not matter
    b = evaluator.evaluate(plan, FID, seed=21)
    c = evaluator.evaluate(plan, FID, seed=22)
    assert a.train_losses == b.train_losses and a.metrics == b.metrics
    assert c.train_losses != a.train_losses


def test_a_bf16_setup_trains_in_the_execution_dtype_from_bf16_rounded_weights(tokenizer):
    """Where the CPU has no fast bf16 kernels (AVX2 only), trials compute in fp32; the frozen weights
    are still what a bf16 setup stores, and the result records the dtype it computed in."""
    load, spec = loader_for("llama", tokenizer)
    plan = Plan(model="llama", granularity="block", groups=tuple(
        PlanGroup(name=n, modules=m, format=QuantFormat(name="bf16", bits=16), rank=2) for n, m in spec.block_groups()))
    evaluator = Evaluator(EvaluatorConfig(model="llama", compute_dtype="bf16"), model_loader=load)
    assert evaluator.dtype == execution_dtype("bf16", "cpu") and evaluator.dtype in ("bf16", "fp32")
    model, _ = evaluator.build_model(plan, seed=3)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch_dtype(evaluator.dtype) for p in frozen)
    assert all(torch.equal(p, p.to(torch.bfloat16).to(p.dtype)) for p in frozen)  # bf16-representable
    result = evaluator.evaluate(plan, FID, seed=3)
    assert result.status is TrialStatus.OK, result.error
    assert result.execution_dtype == evaluator.dtype


def test_plan_without_adapters_is_a_failed_result_not_an_exception(tokenizer):
    load, spec = loader_for("llama", tokenizer)
    evaluator = Evaluator(EvaluatorConfig(model="tiny-llama"), model_loader=load)
    plan = Plan(model=spec.name, granularity="block", groups=tuple(
        PlanGroup(name=name, modules=modules, format=QuantFormat(name="hqq", bits=4), rank=0)
        for name, modules in spec.block_groups()))
    result = evaluator.evaluate(plan, FID, seed=0)
    assert result.status is TrialStatus.FAILED and result.objective is None and "no LoRA adapter" in result.error
