"""experiments/compare.py --smoke: the comparison script end to end on a tiny model, so it cannot rot."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compare(out: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "AUTOQRA_CACHE": str(cache_dir)}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "compare.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)


def test_compare_smoke_writes_cells_and_a_report_and_a_rerun_skips_them(cache_dir, tmp_path):
    import matplotlib.image

    out = tmp_path / "compare"
    first = compare(out, cache_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    cells = {p.name: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    expected = {f"{m}.{task}.qlora.s0.json" for m in ("sequential", "autoqra") for task in ("news", "codebook")}
    expected |= {f"ref.{r}.{task}.qlora.json" for r in ("lora16-r16", "qlora-nf4dq-r16") for task in ("news", "codebook")}
    assert set(cells) == expected
    for cell in cells.values():
        assert len(cell["final"]) == 1 and all(math.isfinite(v) for v in cell["final"])
        if cell["kind"] == "method":  # a searched plan fits, was chosen by its final trial, cost what it says
            assert cell["predicted_peak_bytes"] <= cell["budget_bytes"] and cell["chosen_by"] == "final"
            assert 0 < cell["search_cost"] <= 6 + 1e-9 and cell["trials"]["final"] >= 1
            assert cell["best_so_far"][-1][0] == cell["search_cost"]
    from autoqra.domain import Plan

    for name, cell in cells.items():
        if cell["kind"] != "method":
            continue
        # the retrained plan is the one the search chose, retrained with another seed than its own final trial
        run = out / "runs" / name.removesuffix(".json")
        summary = json.loads((run / "summary.json").read_text())
        assert Plan.from_dict(cell["plan"]).plan_hash == summary["chosen"]["plan_hash"] == cell["chosen_plan_hash"]
        retrains = list((out / "finals").glob(f"{cell['task']}.{cell['chosen_plan_hash'][:12]}.default.final-*.s1.json"))
        assert len(retrains) == 1
        retrain = json.loads(retrains[0].read_text())
        own = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
        own_final = next(t for t in own if t["fidelity"] == "final" and t["result"]["plan"] == cell["plan"])
        assert retrain["seed"] == 1 != own_final["result"]["seed"]
        # the cell keeps what the search's final selection retrained, the chosen plan among them
        assert [e["plan_hash"] for e in cell["final_selection"]] == [e["plan_hash"] for e in summary["final_selection"]]
        assert cell["chosen_plan_hash"] in {e["plan_hash"] for e in cell["final_selection"]}
    report = (out / "runs" / "autoqra.news.qlora.s0" / "report.txt").read_text()
    assert "plan(s) retrained at final (objective at high -> at final)" in report and "chosen plan (by its final result)" in report
    text = (out / "results.md").read_text()
    for task in ("news", "codebook"):
        assert f"## {task} at qlora" in text
    from autoqra.space.memory import MEMORY_MODEL_VERSION

    assert f"Budgets and predicted peaks by memory model version {MEMORY_MODEL_VERSION}." in text
    for method in ("lora16-r16", "qlora-nf4dq-r16", "sequential", "autoqra"):
        assert text.count(f"| {method} |") == 2
    # each plan against QLoRA at the same final seed: QLoRA is the reference of both grids, the others a difference
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and " MiB | " in line]
    assert sorted(r[3] for r in rows if r[0] == "| qlora-nf4dq-r16") == ["(reference)"] * 2
    assert all(re.fullmatch(r"[+-]\d+\.\d+ ± 0\.\d+", r[3]) for r in rows if r[0] != "| qlora-nf4dq-r16")
    image = matplotlib.image.imread(out / "best-so-far.png")
    assert image.shape[0] > 200 and image.shape[1] > 400 and float(image.std()) > 0.02  # decodes, not blank

    # a rerun: finished cells are skipped; a cell lost after its search finished is rebuilt from the run
    # directory (no search, no retrain); a search left unfinished (its process killed: no summary, an
    # open session 100 s long) resumes from its ledger, replaying its trials, and carries those 100 s
    lost = out / "cells" / "sequential.news.qlora.s0.json"
    lost_cell = json.loads(lost.read_text())
    lost.unlink()
    unfinished = out / "runs" / "autoqra.codebook.qlora.s0"
    (unfinished / "summary.json").unlink()
    interrupted_cell = out / "cells" / "autoqra.codebook.qlora.s0.json"
    before = json.loads(interrupted_cell.read_text())
    interrupted_cell.unlink()
    last_trial = (unfinished / "trials.jsonl").stat().st_mtime
    (out / "runs" / "autoqra.codebook.qlora.s0.sessions.json").write_text(
        json.dumps([{"started": last_trial - 100.0, "paused_s": 0.0}]))
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    again = compare(out, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "search sequential" not in again.stderr and "search autoqra on news" not in again.stderr
    assert "search autoqra on codebook" in again.stderr
    assert "holds an unfinished run: resumed from its ledger (100 s searched before)" in again.stderr
    progress = [line for line in again.stderr.splitlines() if re.match(r"\[[\w-]+\] trial \d+ ", line)]
    assert len(progress) == sum(before["trials"].values())  # every trial of the run, none trained again
    assert all("from the ledger (ran before the resume)" in line for line in progress)
    resumed = json.loads(interrupted_cell.read_text())
    assert resumed["chosen_plan_hash"] == before["chosen_plan_hash"] and resumed["trials"] == before["trials"]
    assert resumed["search_cost"] == before["search_cost"] and resumed["final"] == before["final"]
    assert abs(resumed["carried_s"] - 100.0) < 1.0 and resumed["search_wall_s"] >= resumed["carried_s"]
    assert not (out / "runs" / "autoqra.codebook.qlora.s0.sessions.json").exists()
    assert json.loads(lost.read_text())["final"] == lost_cell["final"]
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json") if p in mtimes} == mtimes
    # another trial budget on the same cells is refused in one line, before anything runs
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "AUTOQRA_CACHE": str(cache_dir)}
    refused = subprocess.run([sys.executable, str(ROOT / "experiments" / "compare.py"), "--smoke", "--out", str(out),
                              "--max-trials", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--max-trials 1 does not leave the search one high trial" in refused.stderr.splitlines()[-1]
    # a cell that differs from this run in what makes it another experiment is refused in one line, and
    # kept: each variant is written into its own copy of the output folder, and the copies are refused
    # side by side (each refusal is a fresh interpreter, mostly import time)
    name = "autoqra.news.qlora.s0.json"
    cell = json.loads((out / "cells" / name).read_text())
    assert re.fullmatch(r"[0-9a-f]{12}", cell["space"]) and re.fullmatch(r"[0-9a-f]{12}", cell["prior_model"])
    assert cell["trial_seeds"] == "common"
    mine = cell["trial_dtype"]
    assert mine in ("bf16", "fp32")
    theirs = "fp32" if mine == "bf16" else "bf16"
    assert cell["memory_model"] == MEMORY_MODEL_VERSION > 1
    other_space = {**cell, "space": "0" * 12}
    variants = {  # name: (the cell written, what the last stderr line must hold)
        # made on another space
        "space": (other_space, ["move the old cells away"]),
        # with another prior utility model (it shapes the warm start and the sequential plans)
        "prior": ({**cell, "prior_model": "0" * 12}, ["'prior_model': '000000000000'"]),
        # whose search drew a trial seed per plan (before common random numbers)
        "seeds": ({**cell, "trial_seeds": "per-plan"}, ["'trial_seeds': 'per-plan'"]),
        # whose trials computed in another dtype (bf16 where this CPU runs them in fp32, or the other way
        # round): they differ in rounding, so the table does not mix them
        "dtype": ({**other_space, "trial_dtype": theirs}, [f"'trial_dtype': '{theirs}'"]),
        # priced by another memory model (a cell from before versions reads as version 1): its budget and
        # the plans that fit it are another experiment's
        "memory": ({k: v for k, v in other_space.items() if k != "memory_model"},
                   ["'memory_model': 1", "the memory model changed"]),
    }
    import shutil

    from tests.cli_kit import in_parallel

    kept = {}
    for key, (variant, _) in variants.items():
        copy = tmp_path / f"variant-{key}"
        shutil.copytree(out, copy)
        (copy / "cells" / name).write_text(json.dumps(variant))
        kept[key] = (copy / "cells" / name).read_text()
    refusals = dict(zip(variants, in_parallel(lambda key: compare(tmp_path / f"variant-{key}", cache_dir), variants),
                        strict=True))
    for key, (_, needles) in variants.items():
        refused = refusals[key]
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, (key, refused.stderr[-2000:])
        last = refused.stderr.splitlines()[-1]
        assert all(n in last for n in needles), (key, last)
        assert (tmp_path / f"variant-{key}" / "cells" / name).read_text() == kept[key]
