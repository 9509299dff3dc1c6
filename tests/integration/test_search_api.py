"""The search through its Python entry point on a tiny model: the same trials as the CLI with the
same seed, and the outcome a caller needs (run directory, chosen plan) as a value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="module")
def tiny_space(cache_dir, tmp_path_factory):
    """A 2-block Llama with random weights saved as a model folder (tokenizer of the embedded model),
    and a space over it with fidelities of a few steps."""
    from autoqra.trials.models import save_tiny_llama

    root = tmp_path_factory.mktemp("tiny")
    save_tiny_llama(root / "model")
    space = {
        "version": 1, "name": "tiny-api", "model": str(root / "model"), "granularity": "module",
        "choices": {"formats": [{"name": "hqq", "bits": 2, "group_size": 64}, {"name": "hqq", "bits": 4, "group_size": 64},
                                {"name": "hqq", "bits": 8, "group_size": 64}, {"name": "bf16", "bits": 16}],
                    "ranks": [0, 4, 8]},
        "training": {"batch_size": 2, "seq_len": 32, "compute_dtype": "bf16"},
        "fidelities": {"low": {"steps": 2, "batch_size": 2, "seq_len": 32, "eval_examples": 4},
                       "high": {"steps": 4, "batch_size": 2, "seq_len": 32, "eval_examples": 4},
                       "final": {"steps": 6, "batch_size": 2, "seq_len": 32, "eval_examples": 4}},
        "task": "news",
    }
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def trial_lines(run_dir: Path) -> list[tuple]:
    lines = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    return [(d["number"], d["stage"], d["fidelity"], d["result"]["plan"], d["result"]["seed"], d["result"]["status"],
             d["result"]["objective"], d["predicted_peak_bytes"]) for d in lines]


def test_python_entry_point_runs_the_same_trials_as_the_cli(tiny_space, cache_dir, tmp_path):
    from autoqra import Plan, SearchRequest, run_search

    request = SearchRequest(budget="qlora", space=str(tiny_space), max_trials=12, seed=7, out=tmp_path / "api")
    outcome = run_search(request)
    assert outcome.run_dir == tmp_path / "api" and outcome.chosen_plan is not None
    assert Plan.from_json((outcome.run_dir / "plan.json").read_text()) == outcome.chosen_plan
    assert {"plan.json", "front.json", "summary.json", "settings.json", "trials.db", "trials.jsonl"} <= set(
        outcome.files)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "AUTOQRA_CACHE": str(cache_dir)}
    proc = subprocess.run([sys.executable, "-m", "autoqra", "search", "--budget", "qlora", "--space", str(tiny_space),
                           "--max-trials", "12", "--seed", "7", "--out", str(tmp_path / "cli")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api, cli = trial_lines(tmp_path / "api"), trial_lines(tmp_path / "cli")
    assert len(api) >= 8 and {t[2] for t in api} == {"low", "high", "final"}  # every fidelity was run
    assert api == cli
    assert (tmp_path / "cli" / "plan.json").read_text() == (tmp_path / "api" / "plan.json").read_text()
    # the library call logged nothing to stdout; the CLI printed the report there
    assert "chosen plan (by its final result): objective" in proc.stdout and "[nsga2] trial 1 low" in proc.stderr


def test_request_values_are_checked_when_built():
    from autoqra import SearchRequest
    from autoqra.errors import AutoQRAError

    for kwargs, needle in [({"budget": "12XB"}, "unknown unit"), ({"budget": "qlora", "strategy": "grid"}, "strategy"),
                           ({"budget": "qlora", "preset": "huge"}, "preset"),
                           ({"budget": "qlora", "max_trials": 0}, "--max-trials"),
                           ({"budget": "qlora", "time_limit": "soon"}, "--time-limit"),
                           ({"budget": "qlora", "seed": -1}, "seed")]:
        with pytest.raises(AutoQRAError, match=needle):
            SearchRequest(**kwargs)


def test_requests_take_string_paths_and_a_prepared_search_never_reuses_its_run_directory(tmp_path):
    from autoqra import SearchRequest, prepare_search, run_search
    from autoqra.errors import AutoQRAError

    request = SearchRequest(budget="qlora", out=str(tmp_path / "run"), priors=None)
    assert request.out == tmp_path / "run"  # a notebook's string path becomes a Path
    prepared = prepare_search(request)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trials.db").write_bytes(b"")  # as if the prepared search had run already
    with pytest.raises(AutoQRAError, match="already holds a run"):
        run_search(prepared)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["trials.db"]
