"""Reading a run back: `autoqra.load_run`, `autoqra report` (text, CSV, JSON, plots), from the ledger."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3

import pytest

from autoqra.domain import Plan
from tests.cli_kit import one_error_line, run_cli

PLOTS = ("front.png", "progress.png", "layers.png", "hypervolume.png")


def check_png(path):
    """The file decodes as an image and is not blank (pixel variance above a floor)."""
    import matplotlib.image as mpimg

    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300, pixels.shape
    assert pixels[..., :3].var() > 1e-3, f"{path} looks blank"


def study_trials(out):
    import optuna

    return optuna.load_study(study_name="autoqra", storage=f"sqlite:///{out / 'trials.db'}").get_trials()


def test_search_writes_plots_and_report_reprints_its_report(env, autoqra_run):
    proc, out = autoqra_run
    for name in PLOTS:  # written by the search itself
        check_png(out / "plots" / name)
    assert "plots/front.png" in proc.stdout.splitlines()[-1]
    again = run_cli(env, "report", out)
    assert again.returncode == 0, again.stderr[-2000:]
    # the same text the search printed, minus its last line (where it wrote the files), from the ledger alone
    assert again.stdout.splitlines() == proc.stdout.splitlines()[:-1]


def test_report_csv_json_and_plot_match_the_ledger(env, autoqra_run, tmp_path):
    from autoqra.report.run import TRIAL_COLUMNS

    _, out = autoqra_run
    proc = run_cli(env, "report", out, "--csv", tmp_path / "t.csv", "--plot", tmp_path / "plots", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = study_trials(out)
    with (tmp_path / "t.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == TRIAL_COLUMNS and len(rows) == len(trials)
    for row, trial in zip(rows, trials, strict=True):
        assert int(row["number"]) == trial.number and row["fidelity"] == trial.user_attrs["fidelity"]
        assert float(row["objective"]) == pytest.approx(trial.values[0])
        assert int(row["predicted_peak_bytes"]) == trial.user_attrs["predicted_peak_bytes"]
        assert row["plan_hash"] == trial.user_attrs["plan_hash"]
    data = json.loads(proc.stdout)  # pure JSON: the "wrote" notes went to stderr
    plan = Plan.from_json((out / "plan.json").read_text())
    assert data["finished"] and data["chosen"]["plan_hash"] == plan.plan_hash and data["chosen"]["by"] == "final"
    assert len(data["trials"]) == len(trials) and data["front"]
    for name in PLOTS:
        check_png(tmp_path / "plots" / name)


def test_load_run_tables(autoqra_run):
    import autoqra

    _, out = autoqra_run
    run = autoqra.load_run(out)
    trials = study_trials(out)
    assert list(run.trials["number"]) == [t.number for t in trials]
    summary = json.loads((out / "summary.json").read_text())
    assert run.trials["fidelity"].value_counts().to_dict() == {k: v for k, v in summary["trials"].items() if v}
    plan = Plan.from_json((out / "plan.json").read_text())
    assert run.chosen.plan == plan and run.chosen.by == "final" and run.chosen.row["fidelity"] == "final"
    front = run.front
    assert (front["fidelity"] == "high").all() and front["within_budget"].all()
    assert sorted(front["plan_hash"]) == sorted(p["plan_hash"] for p in json.loads((out / "front.json").read_text()))
    # nominal bits and ranks averaged over the block linears, stored bits from the backends' exact bytes
    row = run.chosen.row
    groups = plan.groups
    n = sum(len(g.modules) for g in groups)
    assert row["avg_bits"] == pytest.approx(sum(g.format.bits * len(g.modules) for g in groups) / n)
    assert row["avg_rank"] == pytest.approx(sum(g.rank * len(g.modules) for g in groups) / n)
    assert row["stored_bits"] > row["avg_bits"]  # HQQ scales and zeros cost extra bits
    layers = run.layers()
    priors = json.loads((out / "priors.json").read_text())
    assert list(layers["group"]) == [g.name for g in groups] and list(layers["rank"]) == [g.rank for g in groups]
    assert list(layers["sensitivity"]) == pytest.approx([g["sensitivity"] for g in priors["groups"]])
    assert run.plan(str(row["plan_hash"])[:10]) == plan and run.plan(int(row["number"])) == plan
    assert run.settings["strategy"] == "autoqra" and run.priors is not None


def test_report_of_a_run_without_its_summary_says_so(env, autoqra_run, tmp_path):
    """A search killed (or still running) has trials but no summary: the report says so and still shows them."""
    _, out = autoqra_run
    copy = tmp_path / "killed"
    copy.mkdir()
    shutil.copy(out / "trials.db", copy / "trials.db")
    with sqlite3.connect(copy / "trials.db") as db:
        db.execute("DELETE FROM study_user_attributes WHERE key = 'autoqra.summary'")
    proc = run_cli(env, "report", copy)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("search still running or stopped before its end (no summary recorded)")
    assert "chosen plan (by its final result)" in proc.stdout


def test_report_bad_input_is_one_line(env, autoqra_run, tmp_path):
    from autoqra.store.ledger import Ledger, sqlite_url

    from tests.cli_kit import in_parallel

    _, out = autoqra_run
    bare = tmp_path / "bare"  # a folder that is not a run
    bare.mkdir()
    empty = tmp_path / "empty"  # a run with settings but no trial
    empty.mkdir()
    ledger = Ledger(sqlite_url(empty), None, ("hqq4-g64",), (4,))
    ledger.set_run_info("settings", json.loads((out / "settings.json").read_text()))
    (tmp_path / "folder.csv").mkdir()
    cases = [  # (arguments, what the one line says): independent reads, run a few at a time
        ((bare,), ["is not an autoqra run directory: it has no trials.db"]),
        ((tmp_path / "nope",), ["is not a directory"]),
        ((f"sqlite:///{tmp_path / 'none.db'}",), ["no trial store at"]),
        ((out, "--study", "other"), ["holds no study named 'other'"]),
        ((empty,), ["has no recorded trial yet"]),
        ((out, "--csv", tmp_path / "folder.csv"), ["--csv file", "is a directory"]),
    ]
    procs = in_parallel(lambda case: run_cli(env, "report", *case[0]), cases)
    for (args, needles), proc in zip(cases, procs, strict=True):
        line = one_error_line(proc)
        assert all(n in line for n in needles), (args, line)
    assert not (tmp_path / "none.db").exists()  # reading never creates a store


def test_notebook_runs_top_to_bottom_on_the_run(autoqra_run):
    import nbformat
    from nbclient import NotebookClient

    from tests.cli_kit import ROOT

    _, out = autoqra_run
    path = ROOT / "notebooks" / "pareto_front.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored without outputs
    assert nb.cells[1].source.startswith("RUN = None")
    nb.cells[1].source = f"RUN = {str(out)!r}"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{out}: autoqra on news" in text and "chosen by its final result" in text
    assert "exported plan" in text and "autoqra.load_quantized" in text  # it ends with the export
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # front, layer map, bits vs rank


def test_dashboard_serves_the_study_on_loopback(env, autoqra_run):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    _, out = autoqra_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "autoqra", "dashboard", str(out), "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as reply:
                    studies = json.load(reply)["study_summaries"]
            except OSError:
                assert server.poll() is None, server.communicate()[1][-2000:]
                time.sleep(0.5)
        assert studies is not None and [s["study_name"] for s in studies] == ["autoqra"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", timeout=30) as reply:
            study = json.load(reply)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert study["objective_names"] == ["quality", "predicted_peak_bytes"]
    recorded = study_trials(out)
    assert len(study["trials"]) == len(recorded)
    for trial in study["trials"]:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert {"plan", "fidelity", "stage", "predicted_peak_bytes"} <= set(attrs)
        assert "bits, rank" in attrs["plan"] and "% of budget" in attrs["plan"]


def test_dashboard_bad_input_is_one_line(env, autoqra_run, tmp_path):
    import socket

    _, out = autoqra_run
    assert "no trials.db" in one_error_line(run_cli(env, "dashboard", tmp_path))
    assert "--port must be in 1..65535" in one_error_line(run_cli(env, "dashboard", out, "--port", "0"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        line = one_error_line(run_cli(env, "dashboard", out, "--port", str(busy.getsockname()[1]), timeout=120))
    assert "cannot serve on 127.0.0.1" in line


def test_export_reloads_with_peft_and_the_backends_as_the_trial_engine_builds_it(env, autoqra_run, tmp_path,
                                                                                 cache_dir):
    import torch
    from peft import LoraConfig, get_peft_model

    import autoqra
    from autoqra.trials.backends import backend_of
    from autoqra.trials.evaluator import Evaluator, EvaluatorConfig

    _, out = autoqra_run
    export = tmp_path / "export"
    proc = run_cli(env, "export", out, "--out", export)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = Plan.from_json((export / "plan.json").read_text())
    assert plan == Plan.from_json((out / "plan.json").read_text())  # --pick chosen by default
    quantization = json.loads((export / "quantization.json").read_text())
    config = LoraConfig.from_pretrained(str(export))
    base, tokenizer = autoqra.load_quantized(quantization["model"], export / "plan.json",
                                             compute_dtype=quantization["compute_dtype"], cache_dir=cache_dir)
    model = get_peft_model(base, config)
    modules = dict(model.named_modules())
    for group in plan.groups:
        for name in group.modules:
            module = modules[f"base_model.model.{name}"]
            layer = getattr(module, "base_layer", module)
            assert group.format.name in backend_of(layer).names
            assert quantization["modules"][name]["backend"] in ("hqq", "bitsandbytes", "dense")
            if group.format.name == "hqq":
                assert int(layer.meta["nbits"]) == group.format.bits == quantization["modules"][name]["nbits"]
            assert (module.lora_A["default"].weight.shape[0] if hasattr(module, "lora_A") else 0) == group.rank
    engine, _ = Evaluator(EvaluatorConfig(model="smollm2-135m", task="news", cache_dir=cache_dir)).build_model(plan, 0)
    ids = tokenizer("The search found a plan that fits the budget.", return_tensors="pt")["input_ids"]
    model.eval()
    engine.eval()
    with torch.no_grad():
        # both start with B = 0 (PEFT's default init): the same quantized base computes the same logits
        assert torch.equal(model(input_ids=ids).logits, engine(input_ids=ids).logits)
    # another pick, and bad picks or a used directory: one line, nothing written
    number = int(json.loads(run_cli(env, "report", out, "--json").stdout)["front"][0])
    assert run_cli(env, "export", out, "--pick", str(number), "--out", tmp_path / "by-number").returncode == 0
    assert "has no trial 999" in one_error_line(run_cli(env, "export", out, "--pick", "999", "--out", tmp_path / "x"))
    assert "hash starting so" in one_error_line(run_cli(env, "export", out, "--pick", "zz", "--out", tmp_path / "x"))
    before = sorted(p.name for p in export.iterdir())
    assert "is not empty" in one_error_line(run_cli(env, "export", out, "--out", export))
    assert sorted(p.name for p in export.iterdir()) == before and not (tmp_path / "x").exists()
