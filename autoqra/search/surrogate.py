"""The performance model: a Gaussian process over per-layer features plus fidelity (BoTorch).

Features of a genome (all roughly in [0, 1]):
- per depth bin (up to 4 contiguous bins of groups): the mean format position and the mean rank
  position on their ladders, so the model sees *where* precision and capacity are spent;
- the prior utility per group (priors-informed summary of the whole assignment);
- the predicted peak memory as a fraction of the budget;
- the fidelity (0 = low, 1 = high), so one GP learns the low-to-high relation from promoted plans.

A ``SingleTaskGP`` (Matern-5/2 ARD, standardized outcomes) is refitted when the data grew by a
fifth since the last fit and otherwise conditioned with the last hyperparameters. GP work runs with
one torch thread (on 2 cores GP fitting is 2-20x slower with two) and on a forked, seeded torch RNG,
so the search is deterministic for a seed and never touches the global RNG state.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoqra.search.codec import Genome, SearchCodec
from autoqra.search.utility import PriorUtility

LOW, HIGH = 0.0, 1.0
MIN_POINTS = 4
DEPTH_BINS = 4


@contextlib.contextmanager
def gp_context(seed: int) -> Iterator[None]:
    """One torch thread and an isolated, seeded torch RNG for the duration of a GP call."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # linear_operator reports each diagonal jitter it adds; expected with near-duplicate plans
            warnings.filterwarnings("ignore", message=".*not p.d., added jitter.*")
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Observation:
    genome: Genome
    fidelity: float  # LOW or HIGH
    objective: float


class PerformanceModel:
    """GP over genome features and fidelity; ``predict`` and ``thompson`` at any fidelity."""

    def __init__(self, codec: SearchCodec, utility: PriorUtility, budget_bytes: int, seed: int) -> None:
        self.codec = codec
        self.utility = utility
        self.budget_bytes = budget_bytes
        self.seed = seed
        bins = min(DEPTH_BINS, codec.n_groups)
        self._bins = np.array_split(np.arange(codec.n_groups), bins)
        self._model: Any = None
        self._state: dict[str, Any] | None = None
        self._fitted_on = 0
        self._calls = 0

    # -- features ----------------------------------------------------------------------------
    def features(self, genome: Genome, fidelity: float) -> np.ndarray:
        codec = self.codec
        f = np.array([g[0] for g in genome], dtype=np.float64) / max(codec.n_formats - 1, 1)
        r = np.array([g[1] for g in genome], dtype=np.float64) / max(codec.n_ranks - 1, 1)
        parts = [f[b].mean() for b in self._bins] + [r[b].mean() for b in self._bins]
        parts.append(self.utility.of(genome) / codec.n_groups)
        parts.append(codec.predicted_peak_bytes(genome) / self.budget_bytes)
        parts.append(fidelity)
        return np.array(parts, dtype=np.float64)

    # -- fitting -----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._model is not None

    def fit(self, observations: Sequence[Observation]) -> bool:
        """(Re)build the GP on ``observations``; False (and not ready) while there are too few."""
        ys = [o.objective for o in observations]
        if len(observations) < MIN_POINTS or float(np.ptp(ys)) == 0.0:
            self._model = None
            return False
        import torch
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Normalize, Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        x = torch.tensor(np.stack([self.features(o.genome, o.fidelity) for o in observations]))
        y = torch.tensor(ys, dtype=torch.float64).unsqueeze(-1)
        self._calls += 1
        with gp_context(self.seed + self._calls):
            model = SingleTaskGP(x, y, outcome_transform=Standardize(1), input_transform=Normalize(x.shape[-1]))
            refit = self._state is None or len(observations) >= 1.2 * self._fitted_on
            if refit:
                fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
                self._fitted_on = len(observations)
                self._state = {k: v for k, v in model.state_dict().items()
                               if not k.startswith(("outcome_transform", "input_transform"))}
            else:
                model.load_state_dict(self._state, strict=False)
            model.eval()
        self._model = model
        return True

    # -- queries -----------------------------------------------------------------------------
    def _x(self, genomes: Sequence[Genome], fidelity: float) -> Any:
        import torch

        return torch.tensor(np.stack([self.features(g, fidelity) for g in genomes]))

    def predict(self, genomes: Sequence[Genome], fidelity: float = HIGH) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the objective."""
        import torch

        assert self._model is not None, "fit() first"
        self._calls += 1
        with gp_context(self.seed + self._calls), torch.no_grad():
            post = self._model.posterior(self._x(genomes, fidelity))
            mean = post.mean.squeeze(-1).numpy().copy()
            std = post.variance.clamp_min(0).sqrt().squeeze(-1).numpy().copy()
        return mean, std

    def thompson(self, genomes: Sequence[Genome], k: int, rng: np.random.Generator,
                 fidelity: float = HIGH) -> list[int]:
        """Indices of ``k`` distinct candidates, each the argmax of one joint posterior sample."""
        import torch

        assert self._model is not None, "fit() first"
        self._calls += 1
        chosen: list[int] = []
        with gp_context(self.seed + self._calls), torch.no_grad():
            post = self._model.posterior(self._x(genomes, fidelity))
            draws = max(k * 4, 8)
            base = torch.tensor(rng.standard_normal((draws, *post.base_sample_shape)))
            samples = post.rsample_from_base_samples(torch.Size([draws]), base).squeeze(-1).numpy()
        for sample in samples:
            for index in np.argsort(-sample):
                if int(index) not in chosen:
                    chosen.append(int(index))
                    break
            if len(chosen) == min(k, len(genomes)):
                break
        return chosen
