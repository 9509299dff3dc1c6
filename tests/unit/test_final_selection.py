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
from autoqra.search.final import FinalStage
from autoqra.search.stage import FINAL_FIDELITY, HIGH_FIDELITY, LOW_FIDELITY, Archive, Ask, Evaluated
from autoqra.search.synthetic import tiny_problem
from autoqra.search.warm_start import baseline_genomes, baseline_plans, prior_plan, sequential_genomes, uniform_that_fit
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


def best_highs(searched, budget_bytes):
    return sorted({e.ask.plan.plan_hash: e for e in searched
                   if e.ask.fidelity == HIGH_FIDELITY and e.ok and e.predicted_peak_bytes <= budget_bytes}.values(),
                  key=lambda e: (-e.objective, e.predicted_peak_bytes))


@pytest.mark.parametrize("strategy", ["random", "sequential"])
def test_the_best_k_high_plans_are_retrained_and_the_best_final_result_is_chosen(problem, strategy):
    outcome = pipeline(problem, strategy).run()
    archive = outcome.archive
    finals = archive.at(FINAL_FIDELITY)
    searched = [e for e in archive.items if e.ask.fidelity != FINAL_FIDELITY]
    assert archive.items[-len(finals):] == finals  # the final selection runs last
    highs = best_highs(searched, problem.budget_bytes)
    assert [e.ask.plan for e in finals] == [e.ask.plan for e in highs[:3]]
    assert outcome.chosen_by == FINAL_FIDELITY
    assert outcome.chosen is max(finals, key=lambda e: e.objective)
    # final reverses high: the chosen plan is the third best at high, which only its final trial shows
    assert outcome.chosen.ask.plan == highs[min(3, len(highs)) - 1].ask.plan
    assert_costs(problem, outcome)


def assert_costs(problem, outcome):
    """The search stages never spend the final selection's reserve; `spent` is the sum of trial costs."""
    archive = outcome.archive
    searched = [e for e in archive.items if e.ask.fidelity != FINAL_FIDELITY]
    costs = fidelity_costs(dict(problem.codec.space.fidelities) | {"final": FINAL})
    assert costs["final"] == 2.0
    assert sum(costs[e.ask.fidelity] for e in searched) <= 20.0 + 1e-9  # the search never spent the reserve
    assert outcome.spent == pytest.approx(sum(costs[e.ask.fidelity] for e in archive.items))
    assert outcome.spent <= 20.0 + 3 * 2.0 + 1e-9


def baseline_asks(problem):
    codec = problem.codec
    return [codec.decode(g) for g in baseline_plans(codec, np.ones(codec.n_groups), problem.budget_bytes)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_autoqra_retrains_its_best_high_plans_and_its_best_baseline_and_chooses_by_final(problem, seed):
    outcome = pipeline(problem, seed=seed).run()
    archive = outcome.archive
    finals = archive.at(FINAL_FIDELITY)
    searched = [e for e in archive.items if e.ask.fidelity != FINAL_FIDELITY]
    assert archive.items[-len(finals):] == finals
    highs = [e.ask.plan for e in best_highs(searched, problem.budget_bytes)]
    baselines = baseline_asks(problem)
    others = [b for b in baselines if b not in highs[:2]]

    def score(plan, fidelity):
        return max((e.objective for e in archive.at(fidelity) if e.ok and e.ask.plan == plan), default=None)

    # the last slot: the best baseline by its high result; the third plan at high if no baseline has one
    scored = [(score(p, HIGH_FIDELITY), -i) for i, p in enumerate(others) if score(p, HIGH_FIDELITY) is not None]
    expected = [*highs[:2], others[-max(scored)[1]] if scored else highs[2]]
    assert [e.ask.plan for e in finals] == expected
    assert len(set(expected)) == 3
    assert outcome.chosen is max(finals, key=lambda e: e.objective)
    assert_costs(problem, outcome)


class BestAt:
    """One plan beats every other at one fidelity (its result there +10); the rest is left as it is.
    At `low` it makes the low screen promote a baseline (the synthetic low screen promotes none); at
    `final` it makes a baseline the search never ranks first win."""

    def __init__(self, inner, plan, fidelity: str) -> None:
        self.inner, self.plan, self.fidelity = inner, plan, fidelity

    def evaluate(self, plan, fidelity, seed):
        result = self.inner.evaluate(plan, fidelity, seed)
        if fidelity.name == self.fidelity and plan == self.plan:
            return result.model_copy(update={"objective": result.objective + 10.0})
        return result


def test_autoqra_never_ends_below_the_baseline_it_retrains_and_k_1_retrains_only_the_best_high_plan(problem):
    """Runs are deterministic up to `final`: a first run shows which baseline the final selection
    retrains (one the low screen promoted); a second, where that plan wins at `final`, must choose it
    over the search's own plans."""
    fidelities = dict(problem.codec.space.fidelities) | {"final": FINAL}
    promoted = BestAt(problem.evaluator, baseline_asks(problem)[-1], LOW_FIDELITY)

    def run(k, evaluator):
        preset = dataclasses.replace(PRESETS["quick"], max_cost=20.0, final_top=k)
        return SearchPipeline(codec=problem.codec, utility=problem.utility, fidelities=fidelities,
                              runner=InlineExecutor(evaluator, fidelities), sensitivity=np.ones(problem.codec.n_groups),
                              config=RunConfig("autoqra", preset, problem.budget_bytes, 0)).run()

    first = run(2, promoted)
    highs = [e.ask.plan for e in best_highs(first.archive.items, problem.budget_bytes)]
    finals = [e.ask.plan for e in first.archive.at(FINAL_FIDELITY)]
    baselines = baseline_asks(problem)
    assert highs[0] not in baselines  # else this test would show nothing: the search's best beats every baseline
    assert finals[0] == highs[0] and finals[1] == promoted.plan and finals[1] != highs[1]
    second = run(2, BestAt(promoted, finals[1], FINAL_FIDELITY))
    assert [e.ask.plan for e in second.archive.at(FINAL_FIDELITY)] == finals
    assert second.chosen.ask.plan == finals[1] and second.chosen_by == FINAL_FIDELITY
    only = run(1, BestAt(promoted, finals[1], FINAL_FIDELITY))
    assert [e.ask.plan for e in only.archive.at(FINAL_FIDELITY)] == [highs[0]] == [only.chosen.ask.plan]


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


def test_the_baseline_slot_goes_to_the_best_baseline_not_already_retrained(problem):
    """When the best plan at high is itself a baseline, the last slot goes to the next baseline, not to
    the search's second best plan (on `news` seed 0 that was a near copy of the first)."""
    codec, budget = problem.codec, problem.budget_bytes
    baselines = [Ask(plan=p, fidelity=FINAL_FIDELITY, genome=codec.encode(p)) for p in baseline_asks(problem)]
    assert len(baselines) >= 3
    searched = next(g for g in (codec.uniform(f, r) for f, r in codec.options())
                    if codec.predicted_peak_bytes(g) <= budget and g not in {b.genome for b in baselines})
    objectives = {baselines[0].plan: -1.0, codec.decode(searched): -1.1, baselines[1].plan: -1.3,
                  baselines[2].plan: -1.2}
    archive = Archive()
    for plan, value in objectives.items():
        result = problem.evaluator.evaluate(plan, problem.codec.space.fidelities[HIGH_FIDELITY], 0)
        archive.add(Evaluated(ask=Ask(plan=plan, fidelity=HIGH_FIDELITY, genome=codec.encode(plan)),
                              result=result.model_copy(update={"objective": value}),
                              predicted_peak_bytes=codec.memory.total(plan), stage="test"))
    asks, why = FinalStage(archive, 2, budget, baselines).candidates()
    assert [a.plan for a in asks] == [baselines[0].plan, baselines[2].plan]
    assert "best baseline plan not among them" in why and "-1.2000 at high" in why
    asks, _ = FinalStage(archive, 3, budget, baselines).candidates()
    assert [a.plan for a in asks] == [baselines[0].plan, codec.decode(searched), baselines[2].plan]
    asks, _ = FinalStage(archive, 2, budget, ()).candidates()  # the baseline strategies: the best k at high
    assert [a.plan for a in asks] == [baselines[0].plan, codec.decode(searched)]
    asks, why = FinalStage(Archive(), 2, budget, baselines).candidates()
    assert asks == [] and "best 0 plan" in why


def test_a_baseline_the_low_screen_never_promoted_does_not_take_the_slot(problem):
    """A baseline with only a `low` result lost the search's own screen; the slot goes to the k-th plan
    at high (at 85% of `qlora` on `news` such a baseline cost 8 units and lost at `final` by 0.245)."""
    codec, budget = problem.codec, problem.budget_bytes
    baselines = [Ask(plan=p, fidelity=FINAL_FIDELITY, genome=codec.encode(p)) for p in baseline_asks(problem)]
    searched = [g for g in (codec.uniform(f, r) for f, r in codec.options())
                if codec.predicted_peak_bytes(g) <= budget and g not in {b.genome for b in baselines}][:2]
    assert len(searched) == 2
    archive = Archive()

    def add(plan, fidelity, value):
        result = problem.evaluator.evaluate(plan, problem.codec.space.fidelities[fidelity], 0)
        archive.add(Evaluated(ask=Ask(plan=plan, fidelity=fidelity, genome=codec.encode(plan)),
                              result=result.model_copy(update={"objective": value}),
                              predicted_peak_bytes=codec.memory.total(plan), stage="test"))
    for b in baselines:  # every baseline trained at low, better there than any searched plan
        add(b.plan, LOW_FIDELITY, -0.5)
    add(codec.decode(searched[0]), HIGH_FIDELITY, -1.0)
    add(codec.decode(searched[1]), HIGH_FIDELITY, -1.1)
    asks, why = FinalStage(archive, 2, budget, baselines).candidates()
    assert [a.plan for a in asks] == [codec.decode(searched[0]), codec.decode(searched[1])]
    assert "no baseline outside them was promoted to high" in why
    add(baselines[1].plan, HIGH_FIDELITY, -1.4)  # once one reaches high, it takes the slot however far behind
    asks, why = FinalStage(archive, 2, budget, baselines).candidates()
    assert [a.plan for a in asks] == [codec.decode(searched[0]), baselines[1].plan]
    assert "-1.4000 at high" in why
