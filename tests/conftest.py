"""Shared fixtures: tiny model configs built in-process (no downloads, ever)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


def tiny_config(family: str, layers: int = 2):
    """A small config of each supported family; shapes divisible by the HQQ packings."""
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    common = dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=layers, vocab_size=512)
    if family == "llama":
        return LlamaConfig(intermediate_size=384, num_key_value_heads=2, head_dim=32, **common)
    if family == "qwen2":
        return Qwen2Config(intermediate_size=320, num_key_value_heads=2, **common)
    if family == "mistral":
        return MistralConfig(intermediate_size=256, num_key_value_heads=2, **common)
    if family == "gemma":
        return GemmaConfig(intermediate_size=256, num_key_value_heads=1, head_dim=32, **common)
    if family == "phi3":
        return Phi3Config(intermediate_size=256, num_key_value_heads=4, pad_token_id=0, bos_token_id=0,
                          eos_token_id=0, **common)
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "mistral", "gemma", "phi3")


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
