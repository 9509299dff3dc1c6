"""The prior utility of a genome: how good the priors alone say a plan is.

Per group ``g`` with normalised sensitivity ``s_g`` (KL at the lowest format) and demand ``d_g``
(LoRA gradient energy), both scaled to mean 1 over groups:

    quantization error   e_g(f) = s_g * 4 ** -(b(f) - b_min)     (0 for 16-bit layers)
    adapter benefit      a_g(f, r) = (d_g + e_g(f)) * log2(1 + r) / log2(1 + r_max)
    utility              u_g(f, r) = -e_g(f) + ADAPTER_WEIGHT * a_g(f, r)

Quantization noise power falls by ~4x per extra bit (hence ``4 ** -b``), where ``b(f)`` is the
format's information bits per weight (:func:`~autoqra.space.formats.information_bits`: code bits plus
the per-group scale/zero or absmax), not its nominal bits. With nominal bits NF4-DQ and HQQ-4 were
the same error at different prices, so the bits-first fill never raised a layer from NF4-DQ (the
cheaper) to HQQ-4 and the `sequential` plan left 8.6% of the `qlora` budget unspent on `news`. The
references measured at `final` on `news` (docs/results-memory-v1.md, loss above 16-bit LoRA r16 at rank 16)
put NF4-DQ's error at 1.85x HQQ-4's and HQQ-3's at 7x; information bits say 1.68x and 4x, nominal
bits 1x and 4x. LoRA helps most where
the task needs adaptation and where quantization hurt most (the coupling the AutoQRA paper argues
for), with diminishing returns in rank. The utility is a prior, not a prediction of the metric: it
orders repair moves, seeds the warm start and steers importance-guided mutation, while the measured
trials and the performance model decide.

``ADAPTER_WEIGHT`` sets how much bits are worth against rank. It is checked against measured training
by ``experiments/utility_check.py`` on the fidelity study's plans (``news``, ``qlora`` budget, the
96-step ``final`` schedule): Spearman rho(utility, final) is 0.46 at weight 0.5 (every sequential plan
at rank 4 or 8 was scored below its rank-16 sibling, which is 0.38 nats worse), 0.97 at 0.05, 0.98
at 0 (where rank would be worth nothing and fill would never raise a rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoqra.priors.schema import Priors
from autoqra.search.codec import Genome, SearchCodec
from autoqra.space.formats import DTYPE_BYTES, information_bits

ADAPTER_WEIGHT = 0.05  # see the module docstring; was 0.5, which bought rank with bits that paid more


@dataclass(frozen=True, eq=False)
class PriorUtility:
    """``table[g, f, r]``: utility of each option of each group; ``importance[g]`` for mutation."""

    table: np.ndarray
    importance: np.ndarray  # per group, mean 1: how much the group's choice matters
    informative: bool  # False for the flat utility used by prior-free baselines

    def of(self, genome: Genome) -> float:
        return float(sum(self.table[g, f, r] for g, (f, r) in enumerate(genome)))


def _normalise(values: np.ndarray) -> np.ndarray:
    mean = float(values.mean())
    return values / mean if mean > 0 else np.ones_like(values)


def format_error(codec: SearchCodec) -> list[float]:
    """Relative quantization error of each format of the ladder: 1 at the fewest information bits,
    4x less per extra bit, 0 for unquantized formats."""
    compute_bytes = DTYPE_BYTES[codec.space.training.compute_dtype]
    bits = [information_bits(fmt, compute_bytes) for fmt in codec.formats]
    quantized = [b for fmt, b in zip(codec.formats, bits) if fmt.quantized]
    b_min = min(quantized) if quantized else 16.0
    return [4.0 ** -(b - b_min) if fmt.quantized else 0.0 for fmt, b in zip(codec.formats, bits)]


def utility_from_scores(codec: SearchCodec, sensitivity: np.ndarray, demand: np.ndarray,
                        informative: bool = True, adapter_weight: float = ADAPTER_WEIGHT) -> PriorUtility:
    s = _normalise(np.asarray(sensitivity, dtype=np.float64))
    d = _normalise(np.asarray(demand, dtype=np.float64))
    err = np.array([format_error(codec)])
    e = s[:, None] * err  # [g, f]
    r_max = max(codec.ranks)
    phi = np.array([np.log2(1 + r) / np.log2(1 + r_max) if r_max > 0 else 0.0 for r in codec.ranks])
    a = (d[:, None] + e)[:, :, None] * phi[None, None, :]
    table = -e[:, :, None] + adapter_weight * a
    importance = _normalise(s + adapter_weight * d)
    return PriorUtility(table=table, importance=importance, informative=informative)


def utility_from_priors(codec: SearchCodec, priors: Priors, adapter_weight: float = ADAPTER_WEIGHT) -> PriorUtility:
    """The utility of measured priors; they must have been measured for the codec's groups."""
    names = tuple(name for name, _ in codec.groups)
    mine = tuple(g.name for g in priors.groups)
    if names != mine:
        raise ValueError(f"priors hold groups {mine[:2]}..., the space {names[:2]}...")
    sens = np.array([g.sensitivity for g in priors.groups])
    dem = np.array([g.demand for g in priors.groups])
    return utility_from_scores(codec, sens, dem, adapter_weight=adapter_weight)


def flat_utility(codec: SearchCodec) -> PriorUtility:
    """Every group equally important: what a method without priors knows."""
    ones = np.ones(codec.n_groups)
    return utility_from_scores(codec, ones, ones, informative=False)
