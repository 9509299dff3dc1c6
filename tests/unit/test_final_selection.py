"""The warm start holds the baselines, and the search ends by retraining its best plans at `final`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from autoqra.domain import Fidelity
from autoqra.errors import AutoQRAError
from autoqra.executors.inline import InlineExecutor
from autoqra.search.pipeline import RunConfig, SearchPipeline, fidelity_costs
from autoqra.search.repair import Repairer
from autoqra.search.settings import PRESETS
from autoqra.search.stage import FINAL_FIDELITY, HIGH_FIDELITY, LOW_FIDELITY
from autoqra.search.synthetic import tiny_problem
from autoqra.search.warm_start import baseline_genomes, prior_plan, sequential_genomes, uniform_that_fit
from autoqra.store.ledger import Ledger, sqlite_url

FINAL = Fidelity(name="final", steps=40, batch_size=2, seq_len=32, eval_examples=4)  # 2 high-trial units


class ReversedAtFinal:
    """The synthetic evaluator, except that `final` ranks plans the other way round from `high`:
    whatever the final selection picks must come from its own trials, not from `high`."""

    def __init__(self, inner, high: Fidelity) -> None:
        self.inner, self.high = inner, high

    def evaluate(self, plan, fidelity, seed):
        if fidelity.name != FINAL_FIDELITY:
            return self.inner.evaluate(plan, fidelity, seed)
        result = self.inner.evaluate(plan, self.high, seed)
        return result.model_copy(update={"objective": -result.objective, "fidelity": fidelity})


@pytest.fixture(scope="module")
def problem():
    return tiny_problem()


def pipeline(problem, strategy="autoqra", final_top=3, max_cost=20.0, with_final=True, ledger=None, seed=0):
    fidelities = dict(problem.codec.space.fidelities)
    if with_final:
        fidelities["final"] = FINAL
    evaluator = ReversedAtFinal(problem.evaluator, fidelities[HIGH_FIDELITY])
    preset = dataclasses.replace(PRESETS["quick"], max_cost=max_cost, final_top=final_top)
    return SearchPipeline(codec=problem.codec, utility=problem.utility, runner=InlineExecutor(evaluator, fidelities),
                          fidelities=fidelities, ledger=ledger, sensitivity=np.ones(problem.codec.n_groups),
                          config=RunConfig(strategy, preset, problem.budget_bytes, seed))


@pytest.mark.parametrize("strategy", ["autoqra", "random", "sequential"])
def test_the_best_k_high_plans_are_retrained_and_the_best_final_result_is_chosen(problem, strategy):
    outcome = pipeline(problem, strategy).run()
    archive = outcome.archive
    finals = archive.at(FINAL_FIDELITY)
    searched = [e for e in archive.items if e.ask.fidelity != FINAL_FIDELITY]
    assert archive.items[-len(finals):] == finals  # the final selection runs last
    highs = sorted({e.ask.plan.plan_hash: e for e in searched
                    if e.ask.fidelity == HIGH_FIDELITY and e.ok and e.predicted_peak_bytes <= problem.budget_bytes
                    }.values(), key=lambda e: (-e.objective, e.predicted_peak_bytes))
    assert [e.ask.plan for e in finals] == [e.ask.plan for e in highs[:3]]
    assert outcome.chosen_by == FINAL_FIDELITY
    assert outcome.chosen is max(finals, key=lambda e: e.objective)
    # final reverses high: the chosen plan is the third best at high, which only its final trial shows
    assert outcome.chosen.ask.plan == highs[min(3, len(highs)) - 1].ask.plan
    costs = fidelity_costs(dict(problem.codec.space.fidelities) | {"final": FINAL})
    assert costs["final"] == 2.0
    assert sum(costs[e.ask.fidelity] for e in searched) <= 20.0 + 1e-9  # the search never spent the reserve
    assert outcome.spent == pytest.approx(sum(costs[e.ask.fidelity] for e in archive.items))
    assert outcome.spent <= 20.0 + 3 * 2.0 + 1e-9


def test_without_a_final_fidelity_or_with_final_top_0_the_plan_is_chosen_by_high(problem):
    for run in (pipeline(problem, with_final=False).run(), pipeline(problem, final_top=0).run()):
        assert not run.archive.at(FINAL_FIDELITY)
        assert run.chosen_by == HIGH_FIDELITY
        assert run.chosen is run.archive.best(HIGH_FIDELITY, problem.budget_bytes)


def test_final_trials_are_recorded_in_the_ledger(problem, tmp_path):
    ledger = Ledger(sqlite_url(tmp_path), tmp_path / "trials.jsonl", tuple(f.label for f in problem.codec.formats),
                    problem.codec.ranks)
    outcome = pipeline(problem, final_top=2, max_cost=8.0, ledger=ledger).run()
    recorded = [e.fidelity for e in ledger.entries()]
    assert recorded.count(FINAL_FIDELITY) == 2 == len(outcome.archive.at(FINAL_FIDELITY))
    assert len(recorded) == len(outcome.archive.items)


def test_trial_budget_must_leave_the_search_something_after_the_final_selection():
    costs = {"low": 0.25, "high": 1.0, "final": 8.0}
    quick = PRESETS["quick"]
    assert quick.total_cost(costs) == 12 + 2 * 8
    assert quick.with_trial_budget(28, costs).max_cost == 12
    for total in (16, 16.5):
        with pytest.raises(AutoQRAError, match=rf"--max-trials {total:g} does not leave the search one high trial "
                                               r".* use --max-trials 17 or more"):
            quick.with_trial_budget(total, costs)
    assert quick.with_trial_budget(17, costs).max_cost == 1
    assert quick.with_final_top(0).with_trial_budget(5, costs).max_cost == 5
    assert quick.final_cost({"low": 0.25, "high": 1.0}) == 0  # a space without `final`
    with pytest.raises(AutoQRAError, match="--final-top must be >= 0"):
        quick.with_final_top(-1)


def test_the_warm_start_holds_the_prior_sequential_and_uniform_plans(problem):
    codec, budget = problem.codec, problem.budget_bytes
    rng = np.random.default_rng(3)
    sensitivity = rng.lognormal(size=codec.n_groups)
    repairer = Repairer(codec, problem.utility, budget)
    baselines = baseline_genomes(repairer, sensitivity)
    sequential = sequential_genomes(codec, sensitivity, budget)
    uniform = [g for g in uniform_that_fit(codec, budget) if codec.ranks[g[0][1]] > 0]
    assert sequential and uniform
    assert baselines[0] == prior_plan(repairer)
    assert set(sequential) <= set(baselines) and set(uniform) <= set(baselines)
    assert len(set(baselines)) == len(baselines)
    assert all(codec.predicted_peak_bytes(g) <= budget for g in baselines)
    # sequential: one plan per rank > 0 that fits, every group at that rank
    assert all(len({r for _, r in g}) == 1 and codec.ranks[g[0][1]] > 0 for g in sequential)


def test_generation_zero_trains_every_baseline_at_low_first(problem):
    p = pipeline(problem, max_cost=20.0)
    repairer = Repairer(problem.codec, problem.utility, problem.budget_bytes)
    baselines = baseline_genomes(repairer, np.ones(problem.codec.n_groups))
    outcome = p.run()
    first = outcome.archive.items[: len(baselines)]
    assert [e.ask.genome for e in first] == baselines
    assert {e.ask.fidelity for e in first} == {LOW_FIDELITY}
