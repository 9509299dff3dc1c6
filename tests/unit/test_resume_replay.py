"""Resume by replay, on the synthetic problem: a search fed the first trials of a run from its ledger
runs only the rest and ends exactly like the uninterrupted run (inline executor, same seed)."""

from __future__ import annotations

from autoqra.executors.factories import SyntheticEvaluatorFactory
from autoqra.executors.inline import InlineExecutor
from autoqra.search.synthetic import tiny_problem
from autoqra.store.ledger import Replay
from tests.executor_kit import synthetic_search, trial_keys


class CountingExecutor(InlineExecutor):
    """Inline, counting the trials it really runs."""

    ran = 0

    def next_result(self):  # type: ignore[no-untyped-def]
        self.ran += 1
        return super().next_result()


def _runner(factory):
    p = tiny_problem(factory.blocks, factory.budget_position, factory.seed)
    return CountingExecutor(factory.build(), dict(p.codec.space.fidelities))


def test_a_replayed_search_runs_only_the_missing_trials_and_ends_the_same(tmp_path):
    factory = SyntheticEvaluatorFactory()
    (tmp_path / "a").mkdir()
    full, ledger = synthetic_search(_runner(factory), factory, tmp_path / "a", max_cost=10.0)
    entries = ledger.entries()
    assert len(entries) == len(full.archive.items) > 10
    done = 9  # the crash came after 9 recorded trials (stage 1 of this budget)
    (tmp_path / "b").mkdir()
    runner = _runner(factory)
    from autoqra.search.pipeline import RunConfig, SearchPipeline
    from autoqra.search.settings import preset
    from autoqra.store.ledger import Ledger, sqlite_url

    p = tiny_problem()
    resumed_ledger = Ledger(sqlite_url(tmp_path / "b"), None, tuple(f.label for f in p.codec.formats), p.codec.ranks)
    pipeline = SearchPipeline(codec=p.codec, utility=p.utility, runner=runner, fidelities=dict(p.codec.space.fidelities),
                              ledger=resumed_ledger, replay=Replay(entries[:done]),
                              config=RunConfig(strategy="autoqra", budget_bytes=p.budget_bytes, seed=0,
                                               preset=preset("quick").with_final_top(0).with_max_cost(10.0)))
    resumed = pipeline.run()
    assert pipeline.replayed_count == done and runner.ran == len(entries) - done
    assert list(trial_keys(resumed)) == list(trial_keys(full))  # same trials, same order
    assert resumed.chosen.ask.plan == full.chosen.ask.plan
    assert len(resumed_ledger.entries()) == len(entries) - done  # replayed trials are not recorded again


def test_replay_hands_each_recorded_result_back_once(tmp_path):
    factory = SyntheticEvaluatorFactory()
    _, ledger = synthetic_search(_runner(factory), factory, tmp_path, max_cost=4.0)
    entries = ledger.entries()
    replay = Replay(entries)
    first = entries[0]
    key = (first.result.plan.plan_hash, first.fidelity, first.result.seed)
    assert replay.take(*key) == first.result
    assert replay.take(*key) is None
    assert replay.left == len(entries) - 1
    assert replay.take(first.result.plan.plan_hash, first.fidelity, first.result.seed + 1) is None  # another seed


def test_replay_counts_results_recorded_at_seeds_this_run_no_longer_derives(tmp_path):
    """A ledger from before common seeds (or of another run seed) cannot replay: the resume says how many."""
    factory = SyntheticEvaluatorFactory()
    _, ledger = synthetic_search(_runner(factory), factory, tmp_path, max_cost=4.0, seed=0)
    entries = ledger.entries()
    assert Replay(entries).at_other_seeds(0) == 0
    assert Replay(entries).at_other_seeds(1) == len(entries) > 0


def test_every_plan_of_a_fidelity_trains_at_the_run_seeds_one_seed():
    """Common random numbers: the search compares plans at the same trial seed per fidelity, and
    another run seed moves every trial seed."""
    factory = SyntheticEvaluatorFactory()
    seeds: dict[int, dict[str, set[int]]] = {}
    for run_seed in (0, 1):
        outcome, _ = synthetic_search(_runner(factory), factory, max_cost=4.0, seed=run_seed)
        by_fidelity: dict[str, set[int]] = {}
        for e in outcome.archive.items:
            by_fidelity.setdefault(e.ask.fidelity, set()).add(e.result.seed)
        assert set(by_fidelity) == {"low", "high"}
        assert len({e.ask.plan.plan_hash for e in outcome.archive.items}) >= 3
        assert all(len(s) == 1 for s in by_fidelity.values()), by_fidelity
        seeds[run_seed] = by_fidelity
    assert seeds[0]["low"] != seeds[0]["high"]
    assert seeds[0]["low"] != seeds[1]["low"] and seeds[0]["high"] != seeds[1]["high"]
