"""`autoqra trial` as a user runs it."""

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def env(cache_dir):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "AUTOQRA_CACHE": str(cache_dir)}


@pytest.fixture(scope="module")
def short_space(small_space, tmp_path_factory):
    """small_space plus `short`, 2 steps at micro's sequence length (64: no arith record is cut), for the
    checks that assert output and cache behaviour rather than learning."""
    import yaml

    data = yaml.safe_load(small_space.read_text())
    data["fidelities"]["short"] = {"steps": 2, "batch_size": 2, "seq_len": 64, "eval_examples": 4}
    path = tmp_path_factory.mktemp("short") / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(env, *args):
    return subprocess.run([sys.executable, "-m", "autoqra", "trial", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_micro_trial_json_and_human_output(env, short_space, tmp_path):
    out = tmp_path / "result.json"
    proc = run(env, "--format", "nf4", "--double-quant", "--rank", "4", "--fidelity", "micro", "--json",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "ok" and result["fidelity"]["name"] == "micro"
    assert result["metrics"]["eval_loss"] < result["metrics"]["initial_eval_loss"]
    assert json.loads(out.read_text()) == result
    assert "fidelity micro" in proc.stderr and "seed" in proc.stderr  # settings are printed

    human = run(env, "--space", str(short_space), "--bits", "8", "--rank", "8", "--task", "arith",
                "--fidelity", "short")
    assert human.returncode == 0, human.stderr[-2000:]
    assert "objective" in human.stdout and "accuracy" in human.stdout and "predicted peak" in human.stdout


@pytest.mark.parametrize("args, needle", [
    (("--fidelity", "ultra"), "no fidelity"),
    (("--task", "poetry"), "unknown task"),
    (("--model", "llama-3.1-8b"), "config-only alias"),
    (("--bits", "7"), "bits"),
])
def test_bad_trial_input_is_one_line(env, args, needle):
    proc = run(env, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("autoqra: error")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in proc.stderr


def test_json_output_stays_json_with_a_corrupt_cache_entry(env, cache_dir, short_space):
    """A damaged quantized-layer cache file is reported on stderr and rebuilt; stdout is only the JSON."""
    args = ("--space", str(short_space), "--format", "nf4", "--rank", "4", "--fidelity", "short", "--json")
    first = run(env, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    entries = sorted((cache_dir / "qlayers").glob("*/*.nf4.*.safetensors"))
    assert entries, "the first trial cached its NF4 layers"
    entries[0].write_bytes(b"\x00garbage, not safetensors")
    second = run(env, *args)
    assert second.returncode == 0, second.stderr[-2000:]
    result = json.loads(second.stdout)  # the whole of stdout is one JSON document
    assert "ignoring unreadable cache entry" in second.stderr and entries[0].name in second.stderr
    # the entry was rebuilt from the weights: the same layer, so the same trial
    assert result["metrics"]["eval_loss"] == json.loads(first.stdout)["metrics"]["eval_loss"]
    assert entries[0].stat().st_size > 1000
