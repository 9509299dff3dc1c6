"""`autoqra trial` as a user runs it."""

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def env(cache_dir):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "AUTOQRA_CACHE": str(cache_dir)}


def run(env, *args):
    return subprocess.run([sys.executable, "-m", "autoqra", "trial", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_micro_trial_json_and_human_output(env, tmp_path):
    out = tmp_path / "result.json"
    proc = run(env, "--format", "nf4", "--double-quant", "--rank", "4", "--fidelity", "micro", "--json",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "ok" and result["fidelity"]["name"] == "micro"
    assert result["metrics"]["eval_loss"] < result["metrics"]["initial_eval_loss"]
    assert json.loads(out.read_text()) == result
    assert "fidelity micro" in proc.stderr and "seed" in proc.stderr  # settings are printed

    human = run(env, "--bits", "8", "--rank", "8", "--task", "arith")
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
