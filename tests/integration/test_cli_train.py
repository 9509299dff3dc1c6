"""`autoqra train`: a plan fine-tuned on the trial engine, saved as a PEFT adapter that reloads exactly."""

from __future__ import annotations

import json

import pytest

from autoqra.domain import Plan, PlanGroup, QuantFormat
from tests.cli_kit import one_error_line, run_cli

HQQ4, HQQ8, BF16 = (QuantFormat(name="hqq", bits=4), QuantFormat(name="hqq", bits=8),
                    QuantFormat(name="bf16", bits=16))


@pytest.fixture(scope="module")
def mixed_plan(tmp_path_factory):
    """Per-block bits and ranks that no standard loader expresses: hqq8 r8, bf16 r4, hqq4 without adapter, hqq4 r4."""
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import uniform_plan

    base = uniform_plan(model_spec("smollm2-135m"), HQQ4, 4)
    special = {0: (HQQ8, 8), 1: (BF16, 4), 2: (HQQ4, 0)}
    groups = tuple(PlanGroup(name=g.name, modules=g.modules, format=special.get(i, (g.format, g.rank))[0],
                             rank=special.get(i, (g.format, g.rank))[1]) for i, g in enumerate(base.groups))
    plan = Plan(model=base.model, granularity=base.granularity, groups=groups)
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    path.write_text(plan.to_json())
    return plan, path


@pytest.fixture(scope="module")
def trained(env, mixed_plan, tmp_path_factory):
    _, path = mixed_plan
    out = tmp_path_factory.mktemp("train") / "adapter"
    proc = run_cli(env, "train", "--plan", path, "--fidelity", "micro", "--evals", "3", "--seed", "5", "--merge",
                   "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def test_train_writes_an_adapter_and_reports_progress(trained, mixed_plan):
    proc, out = trained
    plan, _ = mixed_plan
    for name in ("plan.json", "adapter_config.json", "adapter_model.safetensors", "metrics.json", "README.md",
                 "merged/model.safetensors", "merged/config.json"):
        assert (out / name).is_file(), name
    assert Plan.from_json((out / "plan.json").read_text()) == plan
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and len(metrics["train_losses"]) == 12
    assert [s for s, _ in metrics["evaluations"]] == [4, 8, 12]  # two along the way, one at the end
    assert metrics["evaluations"][-1][1] == metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert "step 4/12: train loss" in proc.stderr and "train: 100%" in proc.stderr  # the progress bar
    assert proc.stdout.startswith("train: held-out loss") and "wrote" in proc.stdout
    config = json.loads((out / "adapter_config.json").read_text())
    no_adapter = set(plan.groups[2].modules)
    assert not no_adapter & set(config["target_modules"])  # rank-0 modules get no adapter
    assert len(config["target_modules"]) == sum(len(g.modules) for g in plan.groups if g.rank > 0)


def test_train_equals_a_trial_of_the_same_plan_fidelity_and_seed(env, trained, mixed_plan, tmp_path):
    _, out = trained
    _, path = mixed_plan
    proc = run_cli(env, "trial", "--plan", path, "--fidelity", "micro", "--seed", "5", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = json.loads(proc.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == trial["seed"]
    # the evaluations along the way draw no randomness and change nothing: the same run as the trial
    assert metrics["train_losses"] == pytest.approx(trial["train_losses"], abs=1e-6)
    assert metrics["eval_loss"] == pytest.approx(trial["metrics"]["eval_loss"], abs=1e-6)


def test_adapter_reloads_onto_the_plan_base_and_reproduces_the_metric(trained, mixed_plan, cache_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import autoqra
    from autoqra.space.search_space import load_space
    from autoqra.trials.backends import backend_of, execution_dtype, torch_dtype
    from autoqra.trials.data import build_task
    from autoqra.trials.train import eval_loss

    _, out = trained
    plan, _ = mixed_plan
    metrics = json.loads((out / "metrics.json").read_text())
    base, tokenizer = autoqra.load_quantized("smollm2-135m", out / "plan.json", cache_dir=cache_dir)
    model = PeftModel.from_pretrained(base, str(out))
    model.eval()
    modules = dict(model.named_modules())
    for fmt, rank, name in ((g.format, g.rank, m) for g in plan.groups for m in g.modules):
        module = modules[f"base_model.model.{name}"]
        layer = getattr(module, "base_layer", module)
        assert fmt.name in backend_of(layer).names  # the plan's backend built the base layer
        if fmt.name == "hqq":
            assert int(layer.meta["nbits"]) == fmt.bits
        else:
            # bf16 weights, computed in fp32 where this CPU has no fast bf16 kernels (as the trial was)
            assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch_dtype(execution_dtype("bf16", "cpu"))
            assert torch.equal(layer.weight, layer.weight.to(torch.bfloat16).to(layer.weight.dtype))
        assert (module.lora_A["default"].weight.shape[0] if hasattr(module, "lora_A") else 0) == rank
    micro = load_space("default").fidelities["micro"]
    data = build_task("news", tokenizer, micro.seq_len, micro.eval_examples, train_rows=64)
    again = eval_loss(model, data.eval_ids, data.eval_labels, micro.batch_size, "cpu")
    assert again == pytest.approx(metrics["eval_loss"], abs=1e-4)
    # the merged 16-bit checkpoint computes the same model, up to rounding the merged weights to bf16
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"), dtype=torch.bfloat16)
    merged.eval()
    assert eval_loss(merged, data.eval_ids, data.eval_labels, micro.batch_size, "cpu") == pytest.approx(again, abs=0.05)


def test_train_bad_input_is_one_line_and_overwrites_nothing(env, tmp_path, mixed_plan):
    _, path = mixed_plan
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    from tests.cli_kit import in_parallel

    cases = [  # (arguments, what the one line says): independent refusals, run a few at a time
        (("--plan", path, "--out", busy), "exists and is not empty"),
        (("--plan", tmp_path / "no.json", "--out", tmp_path / "o1"), "cannot read plan"),
        (("--steps", "0", "--out", tmp_path / "o2"), "--steps must be >= 1"),
        (("--fidelity", "nope", "--out", tmp_path / "o3"), "has no fidelity 'nope'"),
    ]
    procs = in_parallel(lambda case: run_cli(env, "train", *case[0]), cases)
    for (args, needle), proc in zip(cases, procs, strict=True):
        assert needle in one_error_line(proc), args
    assert (busy / "keep.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))
