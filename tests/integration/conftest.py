"""Integration fixtures: the embedded default model (converted once into a per-session cache)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A fresh autoqra cache for the test session (model conversion + quantized layers)."""
    import os

    path = tmp_path_factory.mktemp("autoqra-cache")
    old = os.environ.get("AUTOQRA_CACHE")
    os.environ["AUTOQRA_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("AUTOQRA_CACHE", None)
    else:
        os.environ["AUTOQRA_CACHE"] = old


@pytest.fixture(scope="session")
def embedded_evaluator(cache_dir):
    from autoqra.trials.evaluator import Evaluator, EvaluatorConfig

    return Evaluator(EvaluatorConfig(model="smollm2-135m", task="news", cache_dir=cache_dir))


@pytest.fixture(scope="session")
def default_space():
    from autoqra.space.search_space import load_space

    return load_space("default")


@pytest.fixture(scope="session")
def env(cache_dir):
    """The environment of a CLI subprocess: offline, the session's cache."""
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "AUTOQRA_CACHE": str(cache_dir)}


@pytest.fixture(scope="session")
def small_space(tmp_path_factory):
    """The default space with fidelities small enough for a test (a few seconds a trial)."""
    import yaml

    from tests.cli_kit import ROOT

    data = yaml.safe_load((ROOT / "search_spaces" / "default.yaml").read_text())
    data["name"] = "default-test"
    data["fidelities"]["low"] = {"steps": 2, "batch_size": 2, "seq_len": 32, "eval_examples": 4}
    data["fidelities"]["high"] = {"steps": 4, "batch_size": 2, "seq_len": 32, "eval_examples": 4}
    data["fidelities"]["final"] = {"steps": 6, "batch_size": 2, "seq_len": 32, "eval_examples": 4}
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def autoqra_run(env, small_space, tmp_path_factory):
    """One real `autoqra search` on the embedded model at tiny fidelities: (process, run directory)."""
    from tests.cli_kit import run_cli

    out = tmp_path_factory.mktemp("run") / "r1"
    # low costs 0.5 of a high trial, final 1.5: 12 units = 9 for the search (the warm start's lows, 3
    # promotions, trust-region highs) + the final selection, 2 x 1.5
    proc = run_cli(env, "search", "--budget", "qlora", "--space", small_space, "--max-trials", "12", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out
