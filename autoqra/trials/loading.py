"""A plan's quantized base model outside a search: ``autoqra.load_quantized(model, plan)``.

Standard loaders cannot express most searched plans: transformers' ``HqqConfig`` (and HQQ's own
``AutoHQQHFModel``) key their per-layer settings by *linear tag* with the layer index stripped
(``self_attn.q_proj``), so every block gets the same bits; a plan that gives block 3 eight bits and
block 20 four bits, or mixes HQQ with bitsandbytes, has no standard form. This builds exactly the
base the trial engine trains on (same backends, same quantized layers, same compute dtype), so an
adapter trained by ``autoqra train`` loads onto it with ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoqra.domain import Plan
from autoqra.space.model_spec import model_spec


def load_quantized(model: str, plan: Plan | str | Path, compute_dtype: str = "bf16", device: str = "auto",
                   cache_dir: Path | None = None) -> tuple[Any, Any]:
    """The base model ``model`` (an alias of the embedded default, a local folder or a hub id) with its
    block linears stored as ``plan`` says, and its tokenizer. ``plan``: a Plan or a plan.json path.
    Weights are frozen; quantized layers come from the autoqra layer cache when it holds them. Where
    ``device`` has no fast kernels for ``compute_dtype`` (bf16 on an AVX2-only CPU), the model computes
    in fp32 from weights rounded to ``compute_dtype``, as trials do (``execution_dtype``)."""
    from autoqra.trials.backends import execution_dtype
    from autoqra.trials.layer_cache import LayerCache
    from autoqra.trials.models import cache_root, load_causal_lm, resolve_device, resolve_weights
    from autoqra.trials.quantize import quantize_model

    if not isinstance(plan, Plan):
        plan = Plan.from_json(Path(plan).read_text())
    model_spec(model).check_plan(plan)
    weights = resolve_weights(model)
    base, tokenizer = load_causal_lm(weights, "fp32")  # quantize from full precision, as a trial does
    cache = LayerCache(cache_dir if cache_dir is not None else cache_root(), weights.fingerprint)
    target = resolve_device(device)
    quantize_model(base, plan, execution_dtype(compute_dtype, target), target, cache=cache, storage_dtype=compute_dtype)
    base.eval()
    return base, tokenizer
