"""A synthetic evaluator with a known optimum, for testing and benchmarking the search itself.

It is never used by ``autoqra search``: its objectives are a formula, not training. The objective
at ``high`` is additive over groups, with its own functional form (not the prior utility's):

    quality = BASE - sum_g s_g * c ** -(bits - bits_min) * (1 - LORA_FIX * (1 - exp(-r / 8)))
                   + sum_g d_g * GAIN * (1 - exp(-r / 12))

``low`` adds a plan-dependent bias (fewer steps favour low ranks) and seeded noise, so low and high
agree only roughly. Because objective and memory are both additive over groups on block-granular
spaces without gradient checkpointing, ``exact_optimum`` finds the true best feasible plan by
meet-in-the-middle enumeration of the two halves of the model.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from autoqra.domain import Fidelity, PhaseSeconds, Plan, TrialMetrics, TrialResult, TrialStatus
from autoqra.search.codec import Genome, SearchCodec
from autoqra.search.utility import PriorUtility

BASE = 1.0
LORA_FIX = 0.6
GAIN = 0.01


class SyntheticEvaluator:
    """``evaluate(plan, fidelity, seed)`` from a closed-form objective with known optimum."""

    def __init__(self, codec: SearchCodec, sensitivity: np.ndarray, demand: np.ndarray, decay: float = 3.0,
                 scale: float = 0.05, low_noise: float = 0.003) -> None:
        self.codec = codec
        bits = np.array([fmt.bits if fmt.quantized else 16 for fmt in codec.formats], dtype=np.float64)
        err = scale * decay ** -(bits - bits.min())
        err[[not fmt.quantized for fmt in codec.formats]] = 0.0
        ranks = np.array(codec.ranks, dtype=np.float64)
        fix = 1 - LORA_FIX * (1 - np.exp(-ranks / 8))
        gain = GAIN * (1 - np.exp(-ranks / 12))
        self.table = (-sensitivity[:, None, None] * err[None, :, None] * fix[None, None, :]
                      + demand[:, None, None] * gain[None, None, :])
        self.low_bias = -0.3 * GAIN * ranks / max(ranks.max(), 1.0)  # short runs favour small ranks
        self.low_noise = low_noise

    def quality(self, genome: Genome, fidelity: str = "high", seed: int = 0) -> float:
        value = BASE + sum(self.table[g, f, r] for g, (f, r) in enumerate(genome))
        if fidelity != "high":
            # noise of this plan at this seed: trials share their seed (common random numbers), but a
            # real short run still errs differently for each plan
            rng = np.random.default_rng([seed, *(x for gene in genome for x in gene)])
            value += sum(self.low_bias[r] for _, r in genome) / len(genome) * 10 + rng.normal(0, self.low_noise)
        return float(value)

    def evaluate(self, plan: Plan, fidelity: Fidelity, seed: int) -> TrialResult:
        genome = self.codec.encode(plan)
        value = self.quality(genome, fidelity.name, seed)
        return TrialResult(
            plan=plan, fidelity=fidelity, task="synthetic", seed=seed, status=TrialStatus.OK, objective=value,
            metric_name="accuracy", metrics=TrialMetrics(accuracy=value), train_losses=(),
            predicted_peak_bytes=self.codec.predicted_peak_bytes(genome), measured_peak_bytes=None, measured_static_bytes=0,
            peak_rss_bytes=None, device="synthetic", phases=PhaseSeconds(), versions=(("autoqra", "synthetic"),),
        )


def exact_optimum(codec: SearchCodec, table: np.ndarray, budget_bytes: int) -> tuple[float, Genome]:
    """Best sum of ``table`` over genomes whose additive memory fits, by meet in the middle.

    Requires memory additive over groups (checked on the returned genome against the exact model).
    """
    cost = codec.cost_table
    base = codec.min_bytes
    options = list(codec.options())
    half = codec.n_groups // 2

    def enumerate_half(groups: range) -> tuple[np.ndarray, np.ndarray, list[tuple[tuple[int, int], ...]]]:
        combos = list(itertools.product(options, repeat=len(groups)))
        mem = np.array([sum(cost[g, f, r] for g, (f, r) in zip(groups, c, strict=True)) for c in combos])
        val = np.array([sum(table[g, f, r] for g, (f, r) in zip(groups, c, strict=True)) for c in combos])
        return mem, val, combos

    left = enumerate_half(range(0, half))
    right = enumerate_half(range(half, codec.n_groups))
    order = np.argsort(right[0], kind="stable")
    r_mem, r_val = right[0][order], right[1][order]
    prefix_best = np.maximum.accumulate(r_val)
    prefix_arg = np.zeros(len(r_val), dtype=np.int64)
    for i in range(1, len(r_val)):
        prefix_arg[i] = i if r_val[i] > r_val[prefix_arg[i - 1]] else prefix_arg[i - 1]
    best, best_genome = -math.inf, None
    for mem, val, combo in zip(*left, strict=True):
        room = budget_bytes - base - mem
        j = int(np.searchsorted(r_mem, room, side="right")) - 1
        if j >= 0 and val + prefix_best[j] > best:
            best = float(val + prefix_best[j])
            best_genome = tuple(combo) + tuple(right[2][order[prefix_arg[j]]])
    if best_genome is None:
        raise ValueError("no genome fits the budget")
    if codec.predicted_peak_bytes(best_genome) > budget_bytes:
        raise ValueError("memory is not additive on this space; exact_optimum does not apply")
    return best + BASE, best_genome


@dataclass(frozen=True, eq=False)
class SyntheticProblem:
    codec: SearchCodec
    budget_bytes: int
    evaluator: SyntheticEvaluator
    optimum: float
    optimum_genome: Genome
    utility: PriorUtility


def tiny_problem(blocks: int = 8, budget_position: float = 0.45, seed: int = 123,
                 prior_noise: float = 0.5) -> SyntheticProblem:
    """A tiny Llama-shaped model (built from a config, no weights), 4 HQQ formats x ranks {0,4,8,16}
    per block, the budget at ``budget_position`` of the reachable range, and priors that are the true
    sensitivities and demands times log-normal noise (informative but imperfect, as measured ones are).
    """
    from transformers import LlamaConfig

    from autoqra.search.utility import utility_from_scores
    from autoqra.space.model_spec import spec_from_config
    from autoqra.space.search_space import SearchSpace

    config = LlamaConfig(hidden_size=128, num_attention_heads=4, num_hidden_layers=blocks, vocab_size=512,
                         intermediate_size=384, num_key_value_heads=2, head_dim=32)
    spec = spec_from_config(config, "tiny-llama")
    fidelity = {"batch_size": 2, "seq_len": 32, "eval_examples": 4}
    space = SearchSpace.model_validate({
        "name": "synthetic", "model": "tiny-llama", "granularity": "block",
        "choices": {"formats": tuple({"name": "hqq", "bits": b, "group_size": 64} for b in (2, 3, 4, 8)),
                    "ranks": (0, 4, 8, 16)},
        "training": {"batch_size": 2, "seq_len": 32, "compute_dtype": "bf16"},
        "fidelities": {"low": {"name": "low", "steps": 5, **fidelity}, "high": {"name": "high", "steps": 20, **fidelity}},
    })
    codec = SearchCodec(spec, space)
    budget = int(codec.min_bytes + budget_position * (codec.max_bytes - codec.min_bytes))
    rng = np.random.default_rng(seed)
    sens, dem = rng.lognormal(0, 1.0, codec.n_groups), rng.lognormal(0, 0.5, codec.n_groups)
    evaluator = SyntheticEvaluator(codec, sens, dem)
    optimum, genome = exact_optimum(codec, evaluator.table, budget)
    utility = utility_from_scores(codec, sens * rng.lognormal(0, prior_noise, codec.n_groups),
                                  dem * rng.lognormal(0, prior_noise, codec.n_groups))
    return SyntheticProblem(codec, budget, evaluator, optimum, genome, utility)
