import math

import pytest
import torch

from autoqra.domain import derive_seed
from autoqra.trials.train import is_oom, lr_lambda


def test_schedule_warms_up_then_decays_to_zero():
    values = [lr_lambda(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:], strict=False))
    assert lr_lambda(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert math.isclose(lr_lambda(55, 100, 10), 0.5, abs_tol=1e-9)


def test_oom_classification():
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_trial_seed_derivation_is_stable_and_distinct():
    assert derive_seed(0, "low") == derive_seed(0, "low")
    seeds = {derive_seed(r, f) for r in (0, 1) for f in ("low", "high", "final")}
    assert len(seeds) == 6 and all(0 <= s < 2**32 for s in seeds)
