"""`experiments/compare.py --tasks/--seeds`: which grid cells a run asks for."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest


def _compare():  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parents[2] / "experiments" / "compare.py"
    spec = importlib.util.spec_from_file_location("compare_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tasks_and_seeds_select_grid_cells():
    c = _compare()
    every = c.grids("all")
    assert c.select_grids(every, None, None) == tuple(every)
    assert [(g.task, g.budget, g.seeds) for g in c.select_grids(every, ["news"], [0])] == [
        ("news", "qlora", (0,)), ("news", "85%qlora", (0,))]
    # seeds 1 and 2 exist on the news grids only: codebook drops out rather than run seed 0
    assert [(g.task, g.budget, g.seeds) for g in c.select_grids(every, None, [2, 1])] == [
        ("news", "qlora", (1, 2)), ("news", "85%qlora", (1, 2))]
    assert c.select_grids(every, ["codebook"], [1]) == ()


def test_search_sessions_carry_each_interrupted_session_to_its_last_trial_less_its_pauses(tmp_path: Path) -> None:
    c = _compare()
    trials = tmp_path / "run" / "trials.jsonl"
    sessions = c.SearchSessions(tmp_path / "run.sessions.json", trials)
    assert sessions.carried_s() == 0.0  # nothing ran yet
    sessions.start()
    sessions.paused(30.0)
    first = time.time() - 300.0  # that session began 5 minutes ago
    sessions.path.write_text(json.dumps([{**json.loads(sessions.path.read_text())[0], "started": first}]))
    trials.parent.mkdir()
    trials.write_text("{}\n")
    os.utime(trials, (first + 200.0, first + 200.0))  # its last trial landed 200 s in, then it was killed
    assert sessions.carried_s() == pytest.approx(170.0)  # 200 s less 30 s paused
    sessions.start()  # a second session, killed before it recorded a trial: carries nothing
    assert sessions.carried_s() == pytest.approx(170.0)
    assert all("ended" in e for e in json.loads(sessions.path.read_text()))
    sessions.clear()
    assert not sessions.path.exists() and sessions.carried_s() == 0.0


def test_head_to_head_pairs_final_seeds_and_calls_a_win_only_beyond_twice_the_seed_std():
    c = _compare()

    def cell(method: str, seed: int, final: list[float | None], plan: str) -> dict:
        return {"method": method, "seed": seed, "final": final, "plan": {}, "chosen_plan_hash": plan}

    rows = [cell("autoqra", 0, [-3.30, -3.40], "a0"), cell("autoqra", 1, [-3.30, -3.31], "a1"),
            cell("sequential", 0, [-3.32, -3.41], "s0"),   # +0.015 paired, but the seeds move 0.1: ahead, not beats
            cell("sequential", 1, [-3.40, -3.41], "s1"),   # +0.10 against a 2σ of 0.014: beats
            cell("random", 0, [-3.20, None], "r0"),        # one seed missing: paired on the other alone; -0.1 is within 2σ
            cell("optuna-tpe", 0, [-3.30, -3.40], "a0"),   # the same plan: said so, not counted as a win
            cell("optuna-nsga2", 2, [-3.0, -3.0], "n2")]   # no autoqra cell at seed 2: left out
    lines = c.head_to_head(rows)
    text = "\n".join(lines)
    seq = next(line for line in lines if "vs sequential" in line)
    assert "seed 0: +0.0150 (+0.0200 / +0.0100; 2σ = 0.1414) ahead" in seq
    assert "seed 1: +0.1000 (+0.1000 / +0.1000; 2σ = 0.0141) beats" in seq
    assert seq.endswith("beats 1, ahead 1 of 2 search seeds")
    rnd = next(line for line in lines if "vs random" in line)
    assert "seed 0: -0.1000 (-0.1000; 2σ = 0.1414) behind" in rnd  # autoqra's own spread sets the margin
    assert "vs optuna-tpe" in text and "same plan 1 of 1" in text
    assert "nsga2" not in text
    assert c.head_to_head([cell("sequential", 0, [-3.3, -3.3], "s0")]) == []  # nothing to compare against
