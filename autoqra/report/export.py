"""``autoqra export RUN --out DIR``: a plan of a run as files that PEFT and the quantization backends load.

A search trains many short-lived adapters and keeps none, so an export carries the *structure* to
fine-tune with, not weights (``autoqra train`` writes trained weights in the same layout):

- ``plan.json``: the plan (docs/plan-format.md);
- ``adapter_config.json``: a PEFT ``LoraConfig`` with ``target_modules`` = the adapted modules (rank-0
  modules left out) and ``rank_pattern``/``alpha_pattern`` keyed by exact module name;
- ``quantization.json``: per module, the backend and the settings it is built with (HQQ ``nbits``,
  ``group_size``, ``axis``; bitsandbytes ``quant_type``, ``blocksize``, double quant; dense dtype);
- ``README.md``: the Python that builds the model.

Why no ``HqqConfig``/``BitsAndBytesConfig``: transformers' ``HqqConfig(dynamic_config=...)`` and
HQQ's ``AutoHQQHFModel`` key per-layer settings by linear tag with the block index stripped
(``self_attn.q_proj``), and ``BitsAndBytesConfig`` has one setting for every layer, so a plan whose
bits differ between blocks, or that mixes HQQ with bitsandbytes, has no standard form;
:func:`autoqra.load_quantized` builds it with the backends themselves, exactly as the trials did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoqra.domain import Plan, QuantFormat
from autoqra.errors import AutoQRAError

if TYPE_CHECKING:
    from autoqra.report.run import Run

EXPORT_FILES = ("plan.json", "adapter_config.json", "quantization.json", "README.md")


def backend_settings(fmt: QuantFormat, compute_dtype: str) -> dict[str, Any]:
    """What the backend is built with for ``fmt`` (the same settings as ``autoqra.trials.backends``)."""
    if fmt.name == "hqq":
        return {"backend": "hqq", "class": "hqq.core.quantize.HQQLinear", "nbits": fmt.bits,
                "group_size": fmt.group_size, "axis": 1, "compute_dtype": compute_dtype}
    if fmt.name == "nf4":
        return {"backend": "bitsandbytes", "class": "bitsandbytes.nn.Linear4bit", "quant_type": "nf4",
                "blocksize": fmt.group_size, "double_quant": fmt.double_quant, "compute_dtype": compute_dtype}
    if fmt.name == "int8":
        return {"backend": "bitsandbytes", "class": "bitsandbytes.nn.Linear8bitLt", "bits": 8}
    return {"backend": "dense", "class": "torch.nn.Linear", "dtype": fmt.name}


def export_plan(run: Run, pick: str | None, out: Path) -> tuple[Plan, list[str]]:
    """Write the export of the picked plan (``chosen``, a trial number or a hash prefix) into ``out``, a
    new or empty directory (the CLI checks it can be created first); nothing is ever overwritten."""
    from autoqra.trials.lora import lora_config

    plan = run.plan(pick)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AutoQRAError(f"--out {out} exists and is not an empty directory; choose a new one (nothing was written)")
    training = run.space.training
    model = run.settings["model"]
    config = lora_config(plan, alpha_ratio=training.lora_alpha_ratio)
    config.base_model_name_or_path = model
    quantization = {
        "model": model, "granularity": plan.granularity, "compute_dtype": training.compute_dtype,
        "loader": "autoqra.load_quantized(model, 'plan.json')",
        "modules": {name: backend_settings(fmt, training.compute_dtype)
                    for name, (fmt, _rank) in plan.module_choices().items()},
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(plan.to_json() + "\n")
        config.save_pretrained(str(out))  # adapter_config.json, as PEFT writes it
        (out / "quantization.json").write_text(json.dumps(quantization, indent=2) + "\n")
        (out / "README.md").write_text(_readme(run, plan, out, training.compute_dtype))
    except OSError as exc:
        raise AutoQRAError(f"cannot write {out}: {exc.strerror or exc}") from None
    return plan, list(EXPORT_FILES)


def _readme(run: Run, plan: Plan, out: Path, compute_dtype: str) -> str:
    row = run.trials[run.trials["plan_hash"] == plan.plan_hash].iloc[-1]
    model = run.settings["model"]
    return f"""# Plan {plan.plan_hash[:8]} from {run.source}

{row['avg_bits']:.2f} nominal bits ({row['stored_bits']:.2f} stored bits per weight), LoRA rank
{row['avg_rank']:.2f} on average; predicted peak training memory {row['predicted_peak_bytes'] / 2**20:.1f} MiB
({100 * row['budget_fraction']:.1f}% of the run's budget). Its best result in the run: objective
{row['objective']:.4f} at `{row['fidelity']}`.

Build the base quantized per layer as the plan says, then put fresh adapters of the plan's ranks on it
(`PeftModel.from_pretrained` instead, on a directory written by `autoqra train`, which adds the weights):

```python
import autoqra
from peft import LoraConfig, get_peft_model

base, tokenizer = autoqra.load_quantized({model!r}, {str(out / 'plan.json')!r}, compute_dtype={compute_dtype!r})
model = get_peft_model(base, LoraConfig.from_pretrained({str(out)!r}))
```

Or train it here: `python -m autoqra train --plan {out / 'plan.json'} --out adapter/`.
`quantization.json` lists each module's backend settings; `transformers`' `HqqConfig` and
`BitsAndBytesConfig` cannot express per-block bits, hence `load_quantized`.
"""
