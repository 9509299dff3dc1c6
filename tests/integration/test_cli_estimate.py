"""The CLI as a user runs it: a subprocess, its output, its exit code."""

import json
import os
import subprocess
import sys

import pytest

from autoqra.space.model_spec import packaged_config_path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "autoqra", *args], capture_output=True, text=True, env=ENV, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_imports_no_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "autoqra", "--help"],
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0 and "estimate" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "transformers" not in imported and "autoqra.cli" in imported
    sub = run("estimate", "--help", check=True)
    assert "2^30" in sub.stdout  # budgets and sizes say they are binary


@pytest.mark.parametrize("alias, total, linears", [
    ("llama-3.1-8b", 8_030_261_248, 224),
    ("qwen2.5-7b", 7_615_616_512, 196),
    ("mistral-7b", 7_241_732_096, 224),
    ("phi-3-mini", 3_821_079_552, 128),
])
def test_estimate_json_on_config_files(alias, total, linears):
    proc = run("estimate", "--model", str(packaged_config_path(alias)), "--json", check=True)
    out = json.loads(proc.stdout)
    assert out["model"]["params"]["total"] == total
    assert out["model"]["num_block_linears"] == linears
    memory = out["memory"]
    parts = ["quantized_weights", "unquantized", "lora_params", "lora_grads", "optimizer_states", "framework",
             "activations"]
    # the two phases of the backward pass never overlap: the larger one is at the peak
    phases = {"logits": memory["logits"], "blocks": memory["recompute"] + memory["workspace"]}
    assert memory["peak_phase"] == max(phases, key=phases.get)
    assert memory["total"] == sum(memory[p] for p in parts) + max(phases.values())


def test_human_output_and_budgets(tmp_path):
    proc = run("estimate", "--budget", "qlora", check=True)
    assert "smollm2-135m" in proc.stdout and "134,515,008 total" in proc.stdout
    assert "total peak" in proc.stdout and "qlora = peak of uniform NF4-DQ QLoRA r=16" in proc.stdout
    from tests.cli_kit import in_parallel

    budgets = ("4bits", "80%", "16GB")
    outputs = in_parallel(lambda budget: run("estimate", "--budget", budget, "--json", check=True), budgets)
    for budget, proc in zip(budgets, outputs, strict=True):
        out = json.loads(proc.stdout)
        assert out["budget"]["bytes"] > 0 and out["budget"]["text"] == budget
    fits = json.loads(outputs[-1].stdout)
    assert fits["budget"]["fits"] is True and fits["budget"]["bytes"] == 16 * 2**30


def test_save_plan_and_estimate_it_again(tmp_path):
    path = tmp_path / "plan.json"
    a = json.loads(run("estimate", "--format", "nf4", "--double-quant", "--rank", "8", "--json",
                       "--save-plan", str(path), check=True).stdout)
    b = json.loads(run("estimate", "--plan", str(path), "--json", check=True).stdout)
    assert a["memory"] == b["memory"] and a["plan"]["hash"] == b["plan"]["hash"]
    # the default space trains with gradient checkpointing; turning it off keeps every activation
    plain = json.loads(run("estimate", "--plan", str(path), "--no-grad-checkpointing", "--json", check=True).stdout)
    assert b["memory"]["activations"] < plain["memory"]["activations"]


BAD_INPUT = [
    (("--budget", "16XB"), "budget"),
    (("--budget", "-3GB"), "budget"),
    (("--budget", "0%"), "budget"),
    (("--model", "/nonexistent/config.json"), "does not exist"),
    (("--space", "no-such-space"), "preset"),
    (("--format", "hqq", "--bits", "7"), "bits"),
    (("--format", "nf4", "--bits", "8"), "bits"),
    (("--rank", "-2"), "rank"),
    (("--batch-size", "0"), "batch"),
    (("--plan", "/nonexistent/plan.json"), "cannot read plan"),
    (("--format", "fp32"), "compute dtype"),
    (("--bogus",), "unrecognized"),
]


@pytest.fixture(scope="module")
def bad_input_refusals():
    """Each bad-input case run once, a few at a time (independent processes that only refuse)."""
    from tests.cli_kit import in_parallel

    return dict(zip([a for a, _ in BAD_INPUT], in_parallel(lambda case: run("estimate", *case[0]), BAD_INPUT),
                    strict=True))


@pytest.mark.parametrize("args, needle", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(bad_input_refusals, args, needle):
    proc = bad_input_refusals[args]
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr


def test_bad_plan_and_space_files(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('{"version": 1, "model": "x", "granularity": "block", "groups": [')
    space = tmp_path / "space.yaml"
    space.write_text("name: s\nmodel: smollm2-135m\nchoices: {formats: [], ranks: [4]}\nfidelities: {}\n")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"version": 1, "model": "x", "granularity": "block", "groups": [
        {"name": "g", "modules": ["model.layers.0.mlp.up_proj"], "format": {"name": "hqq", "bits": 4}, "rank": 4}]}))
    from tests.cli_kit import in_parallel

    cases = (("--plan", str(plan)), ("--space", str(space)), ("--plan", str(foreign)))
    for proc in in_parallel(lambda args: run("estimate", *args), cases):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
