"""The whole search loop on a synthetic evaluator with a known optimum (fast; no training)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from autoqra.executors.inline import InlineExecutor
from autoqra.search.pipeline import RunConfig, SearchPipeline
from autoqra.search.settings import PRESETS, STRATEGIES
from autoqra.search.stage import HIGH_FIDELITY, Evaluated
from autoqra.search.synthetic import SyntheticEvaluator, exact_optimum, tiny_problem
from autoqra.store.ledger import Ledger, sqlite_url
from tests.search_kit import HQQ, tiny_codec

SEEDS = range(5)
MAX_COST = 40.0


@pytest.fixture(scope="module")
def problem():
    """8 blocks x (4 HQQ formats x 4 ranks): 16^8 plans, budget at 45% of the reachable range."""
    p = tiny_problem()
    return p.codec, p.budget_bytes, p.evaluator, p.optimum, p.optimum_genome, p.utility


def run(problem, strategy, seed, max_cost=MAX_COST, ledger=None):
    codec, budget, evaluator, _, _, utility = problem
    fidelities = dict(codec.space.fidelities)
    preset = dataclasses.replace(PRESETS["quick"], max_cost=max_cost)
    pipeline = SearchPipeline(codec=codec, utility=utility, runner=InlineExecutor(evaluator, fidelities),
                              fidelities=fidelities, config=RunConfig(strategy, preset, budget, seed), ledger=ledger)
    return pipeline.run()


def high_evals_to_target(outcome, optimum):
    highs = [e for e in outcome.archive.items if e.ask.fidelity == HIGH_FIDELITY]
    return next((i + 1 for i, e in enumerate(highs) if e.objective >= optimum - 0.01 * abs(optimum)), None)


def test_memory_is_additive_here_so_the_optimum_is_exact(problem):
    codec, budget, evaluator, optimum, genome, _ = problem
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = codec.random(rng)
        assert codec.predicted_peak_bytes(g) == codec.min_bytes + sum(codec.cost_table[i, f, r] for i, (f, r) in enumerate(g))
    assert codec.predicted_peak_bytes(genome) <= budget
    assert evaluator.quality(genome) == pytest.approx(optimum)


def test_exact_optimum_matches_brute_force_on_a_small_space():
    codec = tiny_codec(layers=4, formats=HQQ[:3], ranks=(0, 8, 16))
    budget = int(codec.min_bytes + 0.4 * (codec.max_bytes - codec.min_bytes))
    rng = np.random.default_rng(5)
    evaluator = SyntheticEvaluator(codec, rng.lognormal(size=4), rng.lognormal(size=4))
    brute = max(evaluator.quality(g) for g in itertools.product(list(codec.options()), repeat=4)
                if codec.predicted_peak_bytes(g) <= budget)
    assert exact_optimum(codec, evaluator.table, budget)[0] == pytest.approx(brute)


def test_autoqra_reaches_the_optimum_with_fewer_high_trials_than_random(problem):
    optimum = problem[3]
    needed = {"autoqra": [], "random": []}
    for strategy, seed in itertools.product(needed, SEEDS):
        outcome = run(problem, strategy, seed)
        assert outcome.chosen is not None and outcome.chosen.predicted_peak_bytes <= problem[1]
        if strategy == "autoqra":
            gap = (optimum - outcome.chosen.objective) / abs(optimum)
            assert gap <= 0.01, f"seed {seed}: best {outcome.chosen.objective:.5f}, optimum {optimum:.5f}"
        hit = high_evals_to_target(outcome, optimum)
        needed[strategy].append(hit if hit is not None else outcome.count(HIGH_FIDELITY) + 1)
    print("high trials to within 1% of the optimum:", needed)
    assert sum(needed["autoqra"]) < sum(needed["random"])
    assert all(a <= r for a, r in zip(needed["autoqra"], needed["random"], strict=True))


def test_the_search_is_deterministic_for_a_seed(problem):
    first = [(e.ask.plan.plan_hash, e.ask.fidelity) for e in run(problem, "autoqra", 7, max_cost=15).archive.items]
    again = [(e.ask.plan.plan_hash, e.ask.fidelity) for e in run(problem, "autoqra", 7, max_cost=15).archive.items]
    other = [(e.ask.plan.plan_hash, e.ask.fidelity) for e in run(problem, "autoqra", 8, max_cost=15).archive.items]
    assert first == again and first != other


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_respects_budget_and_trial_budget(problem, strategy):
    codec, budget = problem[0], problem[1]
    outcome = run(problem, strategy, 0, max_cost=10)
    assert outcome.spent <= 10 + 1e-9 and outcome.archive.items
    assert all(e.predicted_peak_bytes <= budget for e in outcome.archive.items)
    assert all(codec.memory.total(e.ask.plan) == e.predicted_peak_bytes for e in outcome.archive.items)
    assert outcome.chosen is not None
    assert all(f.ok and f.predicted_peak_bytes <= budget for f in outcome.front)
    if strategy == "autoqra":
        assert outcome.count("low") > 0 and outcome.hv_history and outcome.spearman_low_high is not None
        assert outcome.hv_history == sorted(outcome.hv_history)  # fixed reference: never shrinks
    else:
        assert outcome.count("low") == 0


class _CheckingStage:
    """Wraps a stage; asserts each result is in the ledger before the stage is told."""

    def __init__(self, inner, ledger):
        self.inner, self.ledger, self.name, self.told = inner, ledger, inner.name, 0

    @property
    def done(self):
        return self.inner.done

    def ask(self, n):
        return self.inner.ask(n)

    def tell(self, evaluated: Sequence[Evaluated]):
        stored = {(t.user_attrs["plan_hash"], t.user_attrs["fidelity"]) for t in self.ledger.study.get_trials()}
        assert all((e.ask.plan.plan_hash, e.ask.fidelity) in stored for e in evaluated)
        self.told += len(evaluated)
        self.inner.tell(evaluated)


def test_every_result_is_stored_in_optuna_before_the_stage_is_told(problem, tmp_path):
    import optuna

    codec, budget, evaluator, _, _, utility = problem
    ledger = Ledger(sqlite_url(tmp_path), tmp_path / "trials.jsonl", tuple(f.label for f in codec.formats), codec.ranks)
    fidelities = dict(codec.space.fidelities)
    pipeline = SearchPipeline(codec=codec, utility=utility, runner=InlineExecutor(evaluator, fidelities),
                              fidelities=fidelities, ledger=ledger,
                              config=RunConfig("autoqra", dataclasses.replace(PRESETS["quick"], max_cost=12), budget, 0))
    pipeline.stages = [_CheckingStage(s, ledger) for s in pipeline.stages]
    outcome = pipeline.run()
    assert sum(s.told for s in pipeline.stages) == len(outcome.archive.items)

    study = optuna.load_study(study_name="autoqra", storage=sqlite_url(tmp_path))
    trials = study.get_trials()
    assert len(trials) == len(outcome.archive.items) == len((tmp_path / "trials.jsonl").read_text().splitlines())
    assert study.metric_names == ["quality", "predicted_peak_bytes"]
    for trial, e in zip(trials, outcome.archive.items, strict=True):
        assert trial.values == [e.objective, float(e.predicted_peak_bytes)]
        assert trial.user_attrs["fidelity"] == e.ask.fidelity and trial.user_attrs["stage"] == e.stage
        assert trial.params["block.0.format"] == e.ask.plan.groups[0].format.label
    replayed = Ledger(sqlite_url(tmp_path), None, tuple(f.label for f in codec.formats), codec.ranks).entries()
    assert [r.result for r in replayed] == [e.result for e in outcome.archive.items]
    assert [r.predicted_peak_bytes for r in replayed] == [e.predicted_peak_bytes for e in outcome.archive.items]


def test_ledger_reads_run_directories_written_before_the_rename(problem, tmp_path):
    """Runs recorded before ``peak_bytes`` became ``predicted_peak_bytes`` still replay."""
    import optuna

    codec, budget, evaluator, _, _, utility = problem
    labels = tuple(f.label for f in codec.formats)
    ledger = Ledger(sqlite_url(tmp_path), None, labels, codec.ranks)
    plan = codec.decode(codec.cheapest_genome)
    result = evaluator.evaluate(plan, codec.space.fidelities["high"], 0)
    ledger.record(result, predicted_peak_bytes=123, stage="nsga2", fidelity="high")
    # rewrite the stored attributes as an older autoqra wrote them
    study = optuna.load_study(study_name="autoqra", storage=sqlite_url(tmp_path))
    old = study.get_trials()[0]
    attrs = {k: v for k, v in old.user_attrs.items() if k != "predicted_peak_bytes"} | {"peak_bytes": 123}
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    old_study = optuna.create_study(storage=sqlite_url(legacy), study_name="autoqra", directions=["maximize", "minimize"])
    old_study.add_trial(optuna.trial.create_trial(params=old.params, distributions=old.distributions,
                                                  user_attrs=attrs, values=old.values))
    entries = Ledger(sqlite_url(legacy), None, labels, codec.ranks).entries()
    assert [(e.predicted_peak_bytes, e.result) for e in entries] == [(123, result)]
    # reading it changed nothing: an existing study keeps its (absent) metric names
    assert optuna.load_study(study_name="autoqra", storage=sqlite_url(legacy)).metric_names is None
