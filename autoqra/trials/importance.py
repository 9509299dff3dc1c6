"""Measuring the priors on the real model.

- **Quantization sensitivity** of a group: the mean per-token KL divergence between the output
  distribution of the unquantized model and that of the model with only this group's linears at the
  lowest bit-width of the space, on calibration sequences from the task's training split. The model is
  loaded once; each group's linears are swapped for their quantized versions (from the layer cache)
  and swapped back.
- **Adaptation demand** of a group: with LoRA (rank 8) on every block linear of the unquantized model,
  the mean over a few training batches of the squared gradient norm of the group's adapter weights
  (an empirical-Fisher proxy; at PEFT's init B = 0, so the signal is in the B matrices).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoqra.domain import Plan, PlanGroup, QuantFormat
from autoqra.priors.schema import GroupPrior, Priors
from autoqra.trials.backends import backend_for, dtype_note, execution_dtype
from autoqra.trials.data import TaskData
from autoqra.trials.layer_cache import LayerCache
from autoqra.trials.lora import attach_lora, init_default

if TYPE_CHECKING:
    import torch
    from torch import nn

DEMAND_RANK = 8
log = logging.getLogger(__name__)


def _log_probs(model: nn.Module, ids: torch.Tensor, batch: int) -> list[torch.Tensor]:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch):
            out.append(torch.log_softmax(model(input_ids=ids[start:start + batch]).logits.float(), dim=-1))
    return out


def sensitivity(model: nn.Module, groups: tuple[tuple[str, tuple[str, ...]], ...], lowest: QuantFormat,
                compute_dtype: str, calib_ids: torch.Tensor, cache: LayerCache, full_precision: dict[str, Any],
                batch: int = 4) -> dict[str, float]:
    """KL(reference || group quantized) per token, per group.

    ``model`` is unquantized, in the compute dtype; ``full_precision`` holds the fp32 weights (and
    biases) of the block linears, which are what gets quantized, exactly as a trial build does, so the
    layer cache entries made here are the ones trials reuse.
    """
    import torch

    model.eval()
    reference = _log_probs(model, calib_ids, batch)
    modules = dict(model.named_modules())
    scores: dict[str, float] = {}
    for index, (name, names) in enumerate(groups):
        originals = {m: modules[m] for m in names}
        for m in names:
            parent, _, child = m.rpartition(".")
            float_copy = torch.nn.Linear(originals[m].in_features, originals[m].out_features,
                                         bias=originals[m].bias is not None, device="meta")
            weight, bias = full_precision[m]
            float_copy.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
            if bias is not None:
                float_copy.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
            setattr(modules[parent], child, cache.layer(m, float_copy, lowest, compute_dtype, "cpu"))
        total, tokens = 0.0, 0
        for ref, start in zip(reference, range(0, calib_ids.shape[0], batch), strict=True):
            with torch.no_grad():
                logq = torch.log_softmax(model(input_ids=calib_ids[start:start + batch]).logits.float(), dim=-1)
            total += float((ref.exp() * (ref - logq)).sum())
            tokens += ref.shape[0] * ref.shape[1]
        scores[name] = max(0.0, total / tokens)
        for m in names:
            parent, _, child = m.rpartition(".")
            setattr(modules[parent], child, originals[m])
        log.info(f"priors: sensitivity {index + 1}/{len(groups)} {name}: {scores[name]:.4f}")
    return scores


def demand(model: nn.Module, spec_groups: tuple[tuple[str, tuple[str, ...]], ...], compute_dtype: str,
           data: TaskData, batches: int, batch_size: int, seed: int) -> dict[str, float]:
    """Mean squared LoRA-gradient norm per group over ``batches`` training batches."""
    import torch

    fmt = QuantFormat(name=compute_dtype)  # LoRA on the unquantized layers; bits default to the dtype's width
    plan = Plan(model="priors", granularity="module", groups=tuple(
        PlanGroup(name=m, modules=(m,), format=fmt, rank=DEMAND_RANK) for _, names in spec_groups for m in names))
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = attach_lora(model, plan)
    init_default(peft_model, torch.Generator().manual_seed(seed))
    peft_model.train()
    owner = {m: name for name, names in spec_groups for m in names}
    sums = {name: 0.0 for name, _ in spec_groups}
    generator = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        rows = torch.randint(data.train_ids.shape[0], (batch_size,), generator=generator)
        peft_model.zero_grad(set_to_none=True)
        peft_model(input_ids=data.train_ids[rows], labels=data.train_labels[rows]).loss.backward()
        for pname, param in peft_model.named_parameters():
            if param.grad is None:
                continue
            module = pname.removeprefix("base_model.model.").split(".lora_")[0]
            sums[owner[module]] += float(param.grad.float().pow(2).sum())
    return {name: value / batches for name, value in sums.items()}


def measure_priors(*, model_name: str, fingerprint: str, task: str, granularity: str,
                   groups: tuple[tuple[str, tuple[str, ...]], ...], lowest: QuantFormat, compute_dtype: str,
                   model: nn.Module, data: TaskData, calibration: int, cache: LayerCache, demand_batches: int = 4,
                   seed: int = 0) -> Priors:
    """Both scores for every group of ``model`` (unquantized, fp32 as loaded; it is consumed). Computed
    on the CPU in ``compute_dtype``, or in fp32 from weights rounded to it where this CPU has no fast
    kernels for it (``execution_dtype``), as trials are."""
    from autoqra.trials.backends.base import torch_dtype

    modules = dict(model.named_modules())
    full_precision = {m: (modules[m].weight.detach().clone(),
                          None if modules[m].bias is None else modules[m].bias.detach().clone())
                      for _, names in groups for m in names}
    run_dtype = execution_dtype(compute_dtype, "cpu")
    model.to(torch_dtype(compute_dtype)).to(torch_dtype(run_dtype))
    calib = data.train_ids[:calibration]
    sens = sensitivity(model, groups, lowest, run_dtype, calib, cache, full_precision)
    del full_precision
    # sensitivity swapped every group back: the model is unquantized again, ready for the LoRA probe
    dem = demand(model, groups, compute_dtype, data, demand_batches, min(4, calibration), seed)
    return Priors(
        model=model_name, weights_fingerprint=fingerprint, task=task, granularity=granularity,  # type: ignore[arg-type]
        lowest_format=lowest.label, calibration_sequences=int(calib.shape[0]), seq_len=int(calib.shape[1]),
        groups=tuple(GroupPrior(name=n, modules=m, sensitivity=sens[n], demand=dem[n]) for n, m in groups),
    )


def measure_space_priors(*, model: str, granularity: str, lowest: QuantFormat, compute_dtype: str,
                         task: str, calibration: int, seq_len: int, demand_batches: int, seed: int) -> Priors:
    """Load the model once and measure both priors for every group of the given granularity."""
    from autoqra.space.model_spec import model_spec
    from autoqra.trials.data import build_task
    from autoqra.trials.models import cache_root, load_causal_lm, resolve_weights

    spec = model_spec(model)
    weights = resolve_weights(model)
    net, tokenizer = load_causal_lm(weights, "fp32")
    data = build_task(task, tokenizer, seq_len, 1, train_rows=max(calibration, 64))
    return measure_priors(
        model_name=model, fingerprint=weights.fingerprint, task=task, granularity=granularity,
        groups=spec.groups(granularity), lowest=lowest, compute_dtype=compute_dtype, model=net, data=data,
        calibration=calibration, cache=LayerCache(cache_root(), weights.fingerprint), demand_batches=demand_batches,
        seed=seed,
    )


def cached_space_priors(*, model: str, granularity: str, lowest: QuantFormat, compute_dtype: str,
                        task: str, calibration: int, seq_len: int, demand_batches: int,
                        seed: int) -> tuple[Priors, Path, bool]:
    """The priors from the user cache when measured before with these settings, else measured and cached.

    Returns (priors, cache file, whether it came from the cache). A cached file of another schema or
    for other weights is an error, never silently replaced or read as zeros.
    """
    import hashlib

    from autoqra.priors.schema import PriorsError
    from autoqra.space.model_spec import model_spec
    from autoqra.trials.data import task_fingerprint
    from autoqra.trials.models import cache_root, resolve_weights

    weights = resolve_weights(model)
    groups = model_spec(model).groups(granularity)
    run_dtype = execution_dtype(compute_dtype, "cpu")
    dtype_key = compute_dtype if run_dtype == compute_dtype else f"{compute_dtype}-in-{run_dtype}"
    # the task's data digest and the quantizing library's version too: priors measured on another
    # version of the task's data, or of the code that quantized the lowest format, are not reused
    key = hashlib.sha256(f"{weights.fingerprint}|{task}|{task_fingerprint(task)}|{granularity}|{lowest.label}|"
                         f"{backend_for(lowest).version_tag()}|{dtype_key}|{calibration}|"
                         f"{seq_len}|{demand_batches}|{seed}".encode()).hexdigest()[:20]
    path = cache_root() / "priors" / f"{key}.json"
    if path.is_file():
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PriorsError(f"cannot read cached priors {path}: {exc}") from None
        priors = Priors.from_json(text, source=str(path))
        priors.check_matches(groups, weights.fingerprint, str(path))
        return priors, path, True
    computed_in = dtype_note(compute_dtype, "cpu")
    log.info(f"priors: measuring ({calibration} calibration sequences x {seq_len} tokens at {lowest.label}, "
             f"demand over {demand_batches} batches, in {computed_in}); cached in {path}")
    priors = measure_space_priors(model=model, granularity=granularity, lowest=lowest,
                                  compute_dtype=compute_dtype, task=task, calibration=calibration, seq_len=seq_len,
                                  demand_batches=demand_batches, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(priors.to_json() + "\n")
    tmp.replace(path)
    return priors, path, False
