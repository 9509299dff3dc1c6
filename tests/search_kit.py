"""Shared builders for search tests: tiny model specs and spaces built in-process (no weights)."""

from __future__ import annotations

from autoqra.search.codec import SearchCodec
from autoqra.space.model_spec import spec_from_config
from autoqra.space.search_space import SearchSpace

HQQ = [{"name": "hqq", "bits": b, "group_size": 64} for b in (2, 3, 4, 8)]


def tiny_space(formats=None, ranks=(0, 4, 8, 16), granularity="block", checkpointing=False) -> SearchSpace:
    return SearchSpace.model_validate({
        "name": "tiny", "model": "tiny-llama", "granularity": granularity,
        "choices": {"formats": tuple(formats or (*HQQ, {"name": "bf16", "bits": 16})), "ranks": tuple(ranks)},
        "training": {"batch_size": 2, "seq_len": 32, "compute_dtype": "bf16", "grad_checkpointing": checkpointing},
        "fidelities": {"low": {"name": "low", "steps": 5, "batch_size": 2, "seq_len": 32, "eval_examples": 4},
                       "high": {"name": "high", "steps": 20, "batch_size": 2, "seq_len": 32, "eval_examples": 4}},
    })


def tiny_codec(layers=4, **space_kwargs) -> SearchCodec:
    from tests.conftest import tiny_config

    spec = spec_from_config(tiny_config("llama", layers=layers), "tiny-llama")
    return SearchCodec(spec, tiny_space(**space_kwargs))
