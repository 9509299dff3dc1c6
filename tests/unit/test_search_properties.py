"""Property tests: repair, operators, hypervolume and the trust-region rules (hypothesis)."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoqra.errors import InfeasibleBudget
from autoqra.search.operators import coupled_mutation, crossover, importance_mutation, jitter
from autoqra.search.pareto import dominates, front_indices, hypervolume
from autoqra.search.repair import Repairer
from autoqra.search.trust_region import TrustRegionState, perturb, update_state
from autoqra.search.utility import flat_utility, utility_from_scores
from tests.search_kit import HQQ, tiny_codec

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=None)
def codec_for(kind: str):
    if kind == "block":
        return tiny_codec(layers=4)
    if kind == "module":  # memory not additive over groups: roles inside a block interact
        return tiny_codec(layers=2, granularity="module", ranks=(0, 8))
    return tiny_codec(layers=4, checkpointing=True)  # max over blocks: not additive either


KINDS = st.sampled_from(["block", "module", "checkpointing"])


def genomes(codec, seed):
    return codec.random(np.random.default_rng(seed))


def valid(codec, genome):
    return len(genome) == codec.n_groups and all(0 <= f < codec.n_formats and 0 <= r < codec.n_ranks
                                                 for f, r in genome)


@SETTINGS
@given(kind=KINDS, seed=st.integers(0, 2**32 - 1), where=st.floats(-0.2, 1.2), informative=st.booleans())
def test_repair_ends_feasible_or_raises_with_the_minimum(kind, seed, where, informative):
    codec = codec_for(kind)
    rng = np.random.default_rng(seed)
    utility = (utility_from_scores(codec, rng.lognormal(size=codec.n_groups), rng.lognormal(size=codec.n_groups))
               if informative else flat_utility(codec))
    budget = int(codec.min_bytes + where * (codec.max_bytes - codec.min_bytes))
    repairer = Repairer(codec, utility, budget)
    genome = codec.random(rng)
    try:
        repaired = repairer.repair(genome)
    except InfeasibleBudget as exc:
        assert budget < codec.min_bytes and exc.minimum_bytes == codec.min_bytes
        assert f"{codec.min_bytes:,}" in str(exc)
        return
    assert valid(codec, repaired)
    assert codec.predicted_peak_bytes(repaired) <= budget
    if codec.predicted_peak_bytes(genome) <= budget and codec.has_adapter(genome):
        assert repaired == genome  # a plan that fits and trains is left alone
    keep = int(rng.integers(codec.n_groups))
    kept = repairer.repair(genome, keep=keep)
    assert codec.predicted_peak_bytes(kept) <= budget
    others_cheapest = tuple(genome[g] if g == keep else codec.cheapest_genome[g] for g in range(codec.n_groups))
    # where that corner trains an adapter: a plan with none gets one first, and it may cost the kept group
    if kind == "block" and codec.predicted_peak_bytes(others_cheapest) <= budget and codec.has_adapter(others_cheapest):
        assert kept[keep] == genome[keep]  # the others paid for the kept group
    filled = repairer.fill(repaired)
    assert codec.predicted_peak_bytes(filled) <= budget and utility.of(filled) >= utility.of(repaired) - 1e-12


@SETTINGS
@given(kind=KINDS, seed=st.integers(0, 2**32 - 1), where=st.floats(0.0, 1.0))
def test_repair_and_fill_keep_an_adapter_whenever_one_fits(kind, seed, where):
    """A plan with every rank 0 trains nothing: repair gives one an adapter and never removes the last,
    and fill never trades it for bits, wherever some plan with an adapter fits."""
    codec = codec_for(kind)
    rng = np.random.default_rng(seed)
    # adapter weight as the default utility's: bits pay more than rank, so the greedy would drop them all
    utility = utility_from_scores(codec, rng.lognormal(size=codec.n_groups), rng.lognormal(size=codec.n_groups),
                                  adapter_weight=0.05)
    budget = int(codec.min_bytes + where * (codec.max_bytes - codec.min_bytes))
    repairer = Repairer(codec, utility, budget)
    r1, cheapest = codec.first_adapter_rank, codec.cheapest_genome
    adapter_fits = any(codec.predicted_peak_bytes(cheapest[:g] + ((f, r1),) + cheapest[g + 1:]) <= budget
                       for g in range(codec.n_groups) for f in range(codec.n_formats))
    bare = tuple((f, 0) for f, _ in codec.random(rng))
    one = ((codec.n_formats - 1, codec.n_ranks - 1), *bare[1:])  # the richest option at one group only
    for genome in (bare, one, codec.uniform(codec.n_formats - 1, codec.n_ranks - 1)):
        repaired = repairer.repair(genome)
        filled = repairer.fill(repaired)
        assert codec.predicted_peak_bytes(repaired) <= budget and codec.predicted_peak_bytes(filled) <= budget
        if kind == "block" and adapter_fits:  # additive memory: the greedy's corner is the true one
            assert codec.has_adapter(repaired) and codec.has_adapter(filled), (genome, repaired, filled)
        if codec.has_adapter(genome) and codec.predicted_peak_bytes(genome) <= budget:
            assert repaired == genome  # a plan that fits and trains is left alone


def test_min_bytes_is_the_true_minimum_by_brute_force():
    for codec in (tiny_codec(layers=2), tiny_codec(layers=2, checkpointing=True)):
        options = list(codec.options())
        brute = min(codec.predicted_peak_bytes(g) for g in itertools.product(options, repeat=codec.n_groups))
        assert codec.min_bytes == brute


def test_cheapest_option_is_not_always_the_lowest_format():
    """bf16 r=0 keeps no input for backward, HQQ does: on activation-bound setups it can be cheaper."""
    codec = tiny_codec(layers=4)
    assert codec.predicted_peak_bytes(codec.cheapest_genome) <= codec.predicted_peak_bytes(codec.uniform(0, 0))


@SETTINGS
@given(kind=KINDS, seed=st.integers(0, 2**32 - 1))
def test_operators_keep_genomes_valid_and_repaired_ones_feasible(kind, seed):
    codec = codec_for(kind)
    rng = np.random.default_rng(seed)
    importance = rng.lognormal(size=codec.n_groups)
    importance = importance / importance.mean()
    a, b = codec.random(rng), codec.random(rng)
    c1, c2 = crossover(a, b, rng)
    for g in range(codec.n_groups):  # per-group atomic: each child gene comes whole from a parent
        assert {c1[g], c2[g]} == {a[g], b[g]}
    assert valid(codec, importance_mutation(a, importance, rng, codec))
    assert valid(codec, jitter(a, rng, codec))
    assert valid(codec, perturb(a, 0.3, codec, rng))
    budget = int(codec.min_bytes + 0.5 * (codec.max_bytes - codec.min_bytes))
    repairer = Repairer(codec, utility_from_scores(codec, importance, importance), budget)
    coupled = coupled_mutation(repairer.repair(a), importance, rng, repairer)
    assert valid(codec, coupled) and codec.predicted_peak_bytes(coupled) <= budget


def test_importance_mutation_moves_important_groups_up_more_often():
    codec = tiny_codec(layers=4)
    importance = np.array([3.0, 1.0, 1.0, 1.0 / 3.0]) / (16 / 12)
    rng = np.random.default_rng(0)
    middle = codec.uniform(2, 1)
    ups = np.zeros(4)
    downs = np.zeros(4)
    for _ in range(2000):
        child = importance_mutation(middle, importance, rng, codec, rate=0.5)
        for g, (gene, old) in enumerate(zip(child, middle, strict=True)):
            ups[g] += gene > old
            downs[g] += gene < old
    assert ups[0] / max(downs[0], 1) > 2 and downs[3] / max(ups[3], 1) > 2


def brute_force_area(points, reference):
    """Union of the dominated rectangles, by coordinate compression."""
    q_ref, m_ref = reference
    pts = [(q, m) for q, m in points if q > q_ref and m < m_ref]
    qs = sorted({q_ref, *[q for q, _ in pts]})
    ms = sorted({m_ref, *[m for _, m in pts]})
    area = 0.0
    for (q0, q1), (m0, m1) in itertools.product(zip(qs, qs[1:]), zip(ms, ms[1:])):
        if any(q >= q1 and m <= m0 for q, m in pts):
            area += (q1 - q0) * (m1 - m0)
    return area


POINT = st.tuples(st.floats(-5, 5, allow_nan=False), st.floats(0, 10, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(points=st.lists(POINT, max_size=25), reference=POINT)
def test_hypervolume_equals_brute_force(points, reference):
    assert hypervolume(points, reference) == pytest.approx(brute_force_area(points, reference), rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(points=st.lists(POINT, min_size=1, max_size=25))
def test_front_is_exactly_the_non_dominated_set(points):
    front = front_indices(points)
    for i in front:
        assert not any(dominates(points[j], points[i]) for j in range(len(points)))
    for i in set(range(len(points))) - set(front):
        assert any(dominates(points[j], points[i]) or points[j] == points[i] for j in front)


def test_hypervolume_known_values():
    assert hypervolume([(1.0, 1.0), (2.0, 1.5)], (0.0, 2.0)) == pytest.approx(1.5)
    assert hypervolume([(-1.0, 1.0)], (0.0, 2.0)) == 0.0  # worse than the reference adds nothing


def test_trust_region_expands_shrinks_and_restarts():
    state = TrustRegionState(length=0.4)
    for _ in range(3):
        state = update_state(state, improved=True)
    assert state.length == pytest.approx(0.8) and state.success_count == 0
    state = update_state(state, improved=True)
    state = update_state(state, improved=False)  # a failure resets the success streak
    assert state.success_count == 0 and state.failure_count == 1
    for _ in range(2):
        state = update_state(state, improved=False)
    assert state.length == pytest.approx(0.4)
    while not state.restart:
        state = update_state(state, improved=False)
    assert state.length < state.length_min


def test_format_error_follows_information_bits_not_nominal_bits():
    """NF4-DQ and HQQ-4 are both 4-bit, but HQQ-4's bf16 scale and zero per 64 weights carry 0.37 more
    bits per weight than NF4-DQ's int8 absmax: the error model must tell them apart."""
    from autoqra.search.utility import format_error

    codec = tiny_codec(layers=2, formats=[HQQ2, NF4_DQ, HQQ4, HQQ8, {"name": "bf16", "bits": 16}])
    labels = [fmt.label for fmt in codec.formats]
    err = dict(zip(labels, format_error(codec)))
    assert err["hqq2-g64"] == 1.0 and err["bf16"] == 0.0
    assert err["hqq2-g64"] > err["nf4-dq"] > err["hqq4-g64"] > err["hqq8-g64"] > 0
    assert err["nf4-dq"] / err["hqq4-g64"] == pytest.approx(4 ** (4.5 - (4 + 8 / 64 + 32 / (64 * 256))))


def test_sequential_fill_spends_the_budget_on_hqq4_past_nf4():
    """Quantize-then-LoRA at a budget that fits uniform HQQ-4 must take it, not stop at the cheaper
    NF4-DQ of the same nominal bits (which it did while the error model priced nominal bits)."""
    from autoqra.search.warm_start import sequential_genomes

    codec = tiny_codec(layers=4, formats=[HQQ2, NF4_DQ, HQQ4], ranks=(0, 8))
    hqq4 = [fmt.label for fmt in codec.formats].index("hqq4-g64")
    nf4 = [fmt.label for fmt in codec.formats].index("nf4-dq")
    assert nf4 < hqq4  # cheaper on the ladder
    target = codec.uniform(hqq4, 1)
    budget = codec.predicted_peak_bytes(target)
    sensitivity = np.random.default_rng(0).lognormal(size=codec.n_groups)
    assert sequential_genomes(codec, sensitivity, budget) == [target]


NF4_DQ = {"name": "nf4", "bits": 4, "group_size": 64, "double_quant": True}
HQQ2, HQQ3, HQQ4, HQQ8 = HQQ  # the shared kit's HQQ formats, group 64


def test_placed_adapter_plans_keep_the_bits_and_put_the_smallest_rank_where_demand_is():
    """Where rank everywhere does not fit at a format, the warm start holds that format everywhere with
    the smallest nonzero rank on the groups the prior utility favours, as many as fit; a format whose
    uniform plan with adapters fits gets no such plan (the uniform plan is in the warm start already)."""
    from autoqra.search.warm_start import baseline_genomes, placed_adapter_plans

    codec = tiny_codec(layers=4, formats=[HQQ2, HQQ4], ranks=(0, 4, 8))
    hqq2, hqq4 = 0, 1
    demand = np.array([1.0, 5.0, 1.0, 4.0])

    def repairer_at(budget):
        return Repairer(codec, utility_from_scores(codec, np.ones(4), demand), budget)

    def placed(fmt, groups):
        return tuple((fmt, 1 if g in groups else 0) for g in range(4))

    budget = codec.predicted_peak_bytes(placed(hqq4, {1, 3}))
    # on this tiny model adapters outweigh the bits: rank 4 everywhere fits at neither format
    assert budget < codec.predicted_peak_bytes(codec.uniform(hqq2, 1)) < codec.predicted_peak_bytes(codec.uniform(hqq4, 1))
    assert codec.predicted_peak_bytes(placed(hqq4, {0, 1, 3})) > budget  # a third adapter does not fit at HQQ-4
    repairer = repairer_at(budget)
    assert placed_adapter_plans(repairer) == [placed(hqq2, {1, 3}), placed(hqq4, {1, 3})]
    assert placed(hqq4, {1, 3}) in baseline_genomes(repairer, np.ones(4))
    # one byte less: at HQQ-4 only the group of largest demand keeps its adapter
    assert placed_adapter_plans(repairer_at(budget - 1))[-1] == placed(hqq4, {1})
    # where rank 4 everywhere fits at both formats, there is nothing to place
    assert placed_adapter_plans(repairer_at(codec.predicted_peak_bytes(codec.uniform(hqq4, 1)))) == []
    # nor where no format fits even without adapters
    assert placed_adapter_plans(repairer_at(codec.predicted_peak_bytes(codec.uniform(hqq2, 0)) - 1)) == []
    # a space without rank 0 cannot place adapters
    no_zero = tiny_codec(layers=4, formats=[HQQ2, HQQ4], ranks=(4, 8))
    assert placed_adapter_plans(Repairer(no_zero, utility_from_scores(no_zero, np.ones(4), demand),
                                         no_zero.predicted_peak_bytes(no_zero.uniform(hqq4, 0)) - 1)) == []
