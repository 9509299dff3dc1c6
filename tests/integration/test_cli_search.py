"""`autoqra search` as a user runs it: real trials on the embedded model (tiny fidelities)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from autoqra.domain import Plan
from autoqra.space.budget import parse_budget, resolve
from autoqra.space.memory import MemoryModel
from autoqra.space.model_spec import model_spec
from autoqra.space.search_space import load_space
from tests.cli_kit import run_cli


def search(env, *args):
    return run_cli(env, "search", *args)


def test_search_end_to_end_writes_the_run_directory(autoqra_run, small_space):
    import optuna

    proc, out = autoqra_run
    for name in ("plan.json", "front.json", "summary.json", "settings.json", "priors.json", "trials.db",
                 "trials.jsonl"):
        assert (out / name).is_file(), name
    # settings and progress are printed, the report ends with the plan and the front
    assert "budget    qlora = peak of uniform NF4-DQ QLoRA" in proc.stderr and "strategy  autoqra" in proc.stderr
    assert "[nsga2] trial 1 low" in proc.stderr and "[trust-region]" in proc.stderr and "[final]" in proc.stderr
    assert "generation 0 is the warm start" in proc.stderr
    assert "chosen plan (by its final result): objective" in proc.stdout and "Pareto front" in proc.stdout
    assert "final selection: 2 plan(s) retrained at final" in proc.stdout
    assert "final: retraining the best 1 plan(s) at high and the best baseline plan not among them" in proc.stderr

    space = load_space(str(small_space))
    spec = model_spec(space.model)
    memory = MemoryModel(spec, space.setup)
    budget = resolve(parse_budget("qlora"), memory).bytes
    plan = Plan.from_json((out / "plan.json").read_text())
    assert memory.total(plan) <= budget  # the chosen plan fits

    summary = json.loads((out / "summary.json").read_text())
    counts = summary["trials"]
    assert counts["low"] >= 6 and counts["high"] >= 4 and counts["final"] == 2 and summary["chosen_by"] == "final"
    search_cost = 0.5 * counts["low"] + counts["high"]
    assert 8 <= search_cost <= 9 and summary["cost_spent_high_units"] == pytest.approx(search_cost + 2 * 1.5)
    assert summary["chosen"]["plan_hash"] == plan.plan_hash and summary["promoted_pairs"] == 3

    study = optuna.load_study(study_name="autoqra", storage=f"sqlite:///{out / 'trials.db'}")
    trials = study.get_trials()
    assert len(trials) == sum(counts.values())
    highs = [t for t in trials if t.user_attrs["fidelity"] == "high" and t.values is not None]
    finals = [t for t in trials if t.user_attrs["fidelity"] == "final" and t.values is not None]
    ranked = sorted(highs, key=lambda t: (-t.values[0], t.values[1]))
    # the best plan at high, then the best warm-start baseline plan (sequential or uniform) not among it
    baseline = re.search(r"the best baseline plan not among them \(([0-9a-f]{8}), ", proc.stderr).group(1)
    assert [t.user_attrs["plan_hash"][:8] for t in finals] == [ranked[0].user_attrs["plan_hash"][:8], baseline]
    # only a baseline the low screen promoted qualifies: it has a low and a high trial
    for fidelity in ("low", "high"):
        assert any(t.user_attrs["plan_hash"].startswith(baseline) for t in trials if t.user_attrs["fidelity"] == fidelity)
    best = max(finals, key=lambda t: (t.values[0], -t.values[1]))
    assert best.user_attrs["plan_hash"] == plan.plan_hash  # chosen by its final result
    for t in trials:  # every trial was a real training run
        result = t.user_attrs["result"]
        assert result["device"] == "cpu" and len(result["train_losses"]) == result["fidelity"]["steps"]
        assert t.user_attrs["predicted_peak_bytes"] <= budget and t.values[1] == t.user_attrs["predicted_peak_bytes"]
        assert result["metrics"]["eval_loss"] == pytest.approx(-t.values[0])
    front = json.loads((out / "front.json").read_text())
    assert front and all(p["predicted_peak_bytes"] <= budget for p in front)


def test_existing_run_directory_is_refused_and_left_alone(env, autoqra_run):
    _, out = autoqra_run
    before = (out / "trials.db").stat()
    proc = search(env, "--budget", "qlora", "--out", str(out))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "Traceback" not in proc.stderr
    after = (out / "trials.db").stat()
    assert (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)


def test_generous_budget_is_reported_and_a_baseline_runs(env, small_space, tmp_path):
    proc = search(env, "--budget", "16GB", "--space", str(small_space), "--strategy", "uniform", "--max-trials", "2.5",
                  "--final-top", "1", "--out", str(tmp_path / "u"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "every plan of the space fits this budget" in proc.stderr
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    assert summary["trials"] == {"low": 0, "high": 1, "final": 1}
    # the uniform baseline starts with the QLoRA reference (NF4 double-quant r=16), trained for real
    assert Plan.from_json((tmp_path / "u" / "plan.json").read_text()).groups[0].format.label == "nf4-dq"


BAD_SEARCH_INPUT = [
    (("--budget", "12XB"), "budget '12XB': unknown unit"),
    (("--budget", "1MB"), "smallest reachable peak is"),
    (("--budget", "qlora", "--time-limit", "5x"), "--time-limit '5x' is not understood"),
    (("--budget", "qlora", "--max-trials", "0"), "--max-trials must be > 0"),
    (("--budget", "qlora", "--final-top", "-1"), "--final-top must be >= 0"),
    (("--budget", "qlora", "--max-trials", "16.5"), "--max-trials 16.5 does not leave the search one high trial"),
    (("--budget", "qlora", "--space", "nope.yaml"), "neither a file nor a preset"),
]


@pytest.fixture(scope="module")
def bad_search_refusals(env, tmp_path_factory):
    """Each bad-input case run once, in a folder of its own, a few at a time: args -> (process, folder)."""
    from tests.cli_kit import in_own_folders

    return in_own_folders([args for args, _ in BAD_SEARCH_INPUT], lambda: tmp_path_factory.mktemp("bad-search"),
                          lambda args, folder: search(env, *args, "--out", str(folder / "bad")))


@pytest.mark.parametrize("args, needle", BAD_SEARCH_INPUT)
def test_bad_search_input_is_one_line(bad_search_refusals, args, needle):
    proc, folder = bad_search_refusals[args]
    check_refused(proc, folder, needle)


def test_final_top_on_a_space_without_final_is_one_line(env, small_space, tmp_path):
    data = yaml.safe_load(small_space.read_text())
    del data["fidelities"]["final"]
    space = tmp_path / "no-final.yaml"
    space.write_text(yaml.safe_dump(data))
    check_one_line_error(env, tmp_path, ("--budget", "qlora", "--space", str(space), "--final-top", "2"),
                         "--final-top 2: space default-test has no `final` fidelity")


def check_one_line_error(env, tmp_path, args, needle):
    check_refused(search(env, *args, "--out", str(tmp_path / "bad")), tmp_path, needle)


def check_refused(proc, tmp_path, needle):
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("autoqra: error")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad" / "trials.db").exists()
