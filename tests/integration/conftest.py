"""Integration fixtures: the embedded default model (converted once into a per-session cache)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A fresh autoqra cache for the test session (model conversion + quantized layers)."""
    import os

    path = tmp_path_factory.mktemp("autoqra-cache")
    old = os.environ.get("AUTOQRA_CACHE")
    os.environ["AUTOQRA_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("AUTOQRA_CACHE", None)
    else:
        os.environ["AUTOQRA_CACHE"] = old


@pytest.fixture(scope="session")
def embedded_evaluator(cache_dir):
    from autoqra.trials.evaluator import Evaluator, EvaluatorConfig

    return Evaluator(EvaluatorConfig(model="smollm2-135m", task="news", cache_dir=cache_dir))


@pytest.fixture(scope="session")
def default_space():
    from autoqra.space.search_space import load_space

    return load_space("default")
