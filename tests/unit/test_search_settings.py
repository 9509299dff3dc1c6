"""Search settings at the edges: durations, presets, the time limit, store URLs."""

from __future__ import annotations

import dataclasses

import pytest

from autoqra.errors import AutoQRAError
from autoqra.executors.inline import InlineExecutor
from autoqra.search.pipeline import RunConfig, SearchPipeline, fidelity_costs
from autoqra.search.settings import PRESETS, parse_duration, preset
from autoqra.search.synthetic import tiny_problem
from autoqra.store.ledger import Ledger, StoreError


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1h", 3600), ("90s", 90), ("1h30m", 5400), ("45", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "", "m", "-3", "0", "1h-2m"])
def test_bad_durations_are_errors(text):
    with pytest.raises(AutoQRAError):
        parse_duration(text)


def test_presets_and_costs():
    with pytest.raises(AutoQRAError, match="unknown preset"):
        preset("huge")
    with pytest.raises(AutoQRAError, match="must be > 0"):
        PRESETS["quick"].with_max_cost(0)
    problem = tiny_problem()
    assert fidelity_costs(dict(problem.codec.space.fidelities)) == {"low": 0.25, "high": 1.0}


def test_time_limit_stops_before_any_trial():
    p = tiny_problem()
    fidelities = dict(p.codec.space.fidelities)
    config = RunConfig("autoqra", dataclasses.replace(PRESETS["quick"], max_cost=40), p.budget_bytes, 0,
                       time_limit_s=1e-9)
    outcome = SearchPipeline(codec=p.codec, utility=p.utility, runner=InlineExecutor(p.evaluator, fidelities),
                             fidelities=fidelities, config=config).run()
    assert outcome.stopped_by == "time limit" and not outcome.archive.items and outcome.chosen is None


def test_unknown_strategy_and_bad_store_url_are_errors(tmp_path):
    p = tiny_problem()
    fidelities = dict(p.codec.space.fidelities)
    with pytest.raises(AutoQRAError, match="unknown strategy"):
        SearchPipeline(codec=p.codec, utility=p.utility, runner=InlineExecutor(p.evaluator, fidelities),
                       fidelities=fidelities, config=RunConfig("grid", PRESETS["quick"], p.budget_bytes))
    with pytest.raises(StoreError, match="cannot open the trial store"):
        Ledger("nosuchdb://nowhere", None, ("hqq2-g64",), (0,))
    with pytest.raises(StoreError, match="cannot open the trial store"):
        Ledger(f"sqlite:///{tmp_path}/missing-dir/x.db", None, ("hqq2-g64",), (0,))
