"""The fine-tune of a chosen plan as a library call: ``run_train(TrainRequest(plan=..., out=...))``.

It runs on the trial engine itself (:class:`~autoqra.trials.evaluator.Evaluator`): the same quantized
base, adapters, initialisation, batches and schedule as ``autoqra trial`` at the same fidelity and
seed, so ``train --fidelity final --seed S`` reproduces ``trial --fidelity final --seed S`` and a
search's final selection. It adds a progress bar, held-out evaluations along the way, and the saved
result: a PEFT adapter that loads onto :func:`autoqra.load_quantized` (and, with ``merge``, a
dequantized 16-bit checkpoint with the adapters merged in).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoqra.domain import Fidelity, Plan, TrialMetrics, TrialStatus, derive_seed
from autoqra.errors import AutoQRAError
from autoqra.service.requests import TrainRequest, check_empty_output_dir, resolve_trial_inputs
from autoqra.space.search_space import SearchSpace

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class PreparedTrain:
    request: TrainRequest
    space: SearchSpace
    plan: Plan
    plan_source: str
    fidelity: Fidelity
    task: str
    seed: int  # the trial seed, derived from (seed, fidelity) exactly as `autoqra trial` does
    device: str


@dataclass(frozen=True)
class TrainRun:
    """What a finished ``train`` wrote and measured."""

    out: Path
    plan: Plan
    status: TrialStatus
    metric_name: str
    objective: float | None
    metrics: TrialMetrics
    evaluations: tuple[tuple[int, float], ...]  # (step, held-out loss) along the way, the last one at the end
    train_losses: tuple[float, ...]
    seconds: float
    files: tuple[str, ...] = field(default=())
    error: str = ""


def prepare_train(request: TrainRequest) -> PreparedTrain:
    """Check ``request`` in full; raises AutoQRAError (one line) before anything is loaded or written."""
    from autoqra.trials.models import resolve_device

    space, spec, task = resolve_trial_inputs(request.space, request.model, request.task)
    plan, source = request.plan.resolve(space, spec)
    plan.check_trainable()
    if request.fidelity not in space.fidelities:
        raise AutoQRAError(f"space {space.name} has no fidelity {request.fidelity!r} "
                           f"(has {', '.join(space.fidelities)})")
    fidelity = space.fidelities[request.fidelity]
    if request.steps is not None:
        fidelity = fidelity.model_copy(update={"steps": request.steps})
    device = resolve_device(request.device)
    check_empty_output_dir(request.out, "--out")
    return PreparedTrain(request=request, space=space, plan=plan, plan_source=source, fidelity=fidelity, task=task,
                         seed=derive_seed(request.seed, fidelity.name), device=device)


def run_train(request: TrainRequest | PreparedTrain) -> TrainRun:
    """Train the plan's adapters and save them (see the module docstring)."""
    from autoqra.trials.backends import dtype_note
    from autoqra.trials.evaluator import Evaluator, EvaluatorConfig
    from autoqra.trials.train import eval_loss

    p = request if isinstance(request, PreparedTrain) else prepare_train(request)
    check_empty_output_dir(p.request.out, "--out")  # again: a prepared run may be run twice
    t, f = p.space.training, p.fidelity
    config = EvaluatorConfig.for_space(p.space, p.task, device=p.device)
    log.info(f"train: model {p.space.model}, task {p.task}, fidelity {f.name}: {f.steps} steps x batch {f.batch_size} "
             f"x seq {f.seq_len}, {f.eval_examples} eval examples; {dtype_note(t.compute_dtype, p.device)}, {t.optimizer}, lr "
             f"{t.learning_rate:g}, seed {p.seed} (from --seed {p.request.seed}); on {p.device}")
    log.info(f"plan: {p.plan_source} [{p.plan.plan_hash[:8]}]")
    started = time.perf_counter()
    evaluator = Evaluator(config)
    model, tokenizer = evaluator.build_model(p.plan, p.seed)
    data = evaluator.task_data(tokenizer, f)
    checkpoints = _eval_steps(f.steps, p.request.evals)
    evaluations: list[tuple[int, float]] = []
    bar = _progress(f.steps)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if step in checkpoints:
            model.eval()
            held_out = eval_loss(model, data.eval_ids, data.eval_labels, f.batch_size, p.device)
            evaluations.append((step, held_out))
            bar.write(f"step {step}/{f.steps}: train loss {loss:.4f}, held-out loss {held_out:.4f}", file=sys.stderr)

    try:
        outcome, metrics, objective, _ = evaluator.train_and_score(model, tokenizer, data, f, p.seed, on_step)
    finally:
        bar.close()
    if metrics.eval_loss is not None:
        evaluations.append((len(outcome.losses), metrics.eval_loss))
    run = TrainRun(out=p.request.out, plan=p.plan, status=outcome.status,
                   metric_name="accuracy" if metrics.accuracy is not None else "eval_loss", objective=objective,
                   metrics=metrics, evaluations=tuple(evaluations), train_losses=outcome.losses,
                   seconds=time.perf_counter() - started, error=outcome.error)
    return dataclasses.replace(run, files=tuple(_write(p, run, model, tokenizer)))


def _eval_steps(steps: int, evals: int) -> set[int]:
    """Steps after which the held-out loss is measured along the way (the end is always measured)."""
    return {max(1, round(k * steps / evals)) for k in range(1, evals)} - {steps} if evals > 1 else set()


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True, leave=True, file=sys.stderr)


def _write(p: PreparedTrain, run: TrainRun, model: Any, tokenizer: Any) -> list[str]:
    out = p.request.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(p.plan.to_json() + "\n")
        written = ["plan.json"]
        if run.status is TrialStatus.OK:
            model.save_pretrained(str(out))  # PEFT: adapter_config.json + adapter_model.safetensors only
            written += list(ADAPTER_FILES)
            if p.request.merge:
                written += _write_merged(p, model, tokenizer, out / "merged")
        (out / "metrics.json").write_text(json.dumps(_metrics(p, run), indent=2) + "\n")
        (out / "README.md").write_text(_readme(p, run))
    except OSError as exc:
        raise AutoQRAError(f"cannot write {out}: {exc.strerror or exc}") from None
    return [*written, "metrics.json", "README.md"]


def _metrics(p: PreparedTrain, run: TrainRun) -> dict[str, Any]:
    m = run.metrics
    return {
        "status": run.status.value, "error": run.error, "metric_name": run.metric_name, "objective": run.objective,
        "eval_loss": m.eval_loss, "perplexity": m.perplexity, "accuracy": m.accuracy,
        "initial_eval_loss": m.initial_eval_loss, "evaluations": [list(e) for e in run.evaluations],
        "train_losses": list(run.train_losses), "model": p.space.model, "space": p.space.name, "task": p.task,
        "fidelity": p.fidelity.model_dump(mode="json"), "seed": p.seed, "run_seed": p.request.seed,
        "compute_dtype": p.space.training.compute_dtype, "plan_hash": p.plan.plan_hash, "device": p.device,
        "wall_s": run.seconds,
    }


def _readme(p: PreparedTrain, run: TrainRun) -> str:
    f = p.fidelity
    metric = ("not trained to the end: " + run.status.value + (f" ({run.error})" if run.error else "")
              if run.status is not TrialStatus.OK else
              f"held-out loss {run.metrics.eval_loss:.6f}" + (f", accuracy {run.metrics.accuracy:.4f}"
                                                               if run.metrics.accuracy is not None else ""))
    return f"""# LoRA adapter for plan {p.plan.plan_hash[:8]}

Trained by `autoqra train` on {p.space.model}, task `{p.task}`, fidelity `{f.name}` ({f.steps} steps x batch
{f.batch_size} x seq {f.seq_len}), seed {p.seed}: {metric}. Files: `plan.json` (the per-layer formats
and ranks), `adapter_config.json` + `adapter_model.safetensors` (PEFT), `metrics.json`.

The base must be quantized as the plan says before the adapter goes on (no standard loader expresses
per-layer bits; `autoqra.load_quantized` builds exactly the base it was trained on):

```python
import autoqra
from peft import PeftModel

base, tokenizer = autoqra.load_quantized({p.space.model!r}, {str(p.request.out / 'plan.json')!r},
                                         compute_dtype={p.space.training.compute_dtype!r})
model = PeftModel.from_pretrained(base, {str(p.request.out)!r})
```
""" + ("""
`merged/` holds the dequantized base with the adapters merged in, in the compute dtype, as a plain
transformers checkpoint (`AutoModelForCausalLM.from_pretrained("merged")`); it computes what the
quantized model with its adapters computes, up to the rounding of the merged weights to that dtype.
""" if p.request.merge and run.status is TrialStatus.OK else "")


def _write_merged(p: PreparedTrain, model: Any, tokenizer: Any, folder: Path) -> list[str]:
    """The base's dequantized weights plus scaling x B @ A of every adapter, in a dense model.

    PEFT's own ``merge_and_unload`` would re-quantize each merged weight into its base format (HQQ,
    NF4), losing the adapter's update; this writes dense weights instead.
    """
    import torch

    from autoqra.trials.backends import torch_dtype
    from autoqra.trials.lora import dequantized_weight
    from autoqra.trials.models import load_causal_lm, resolve_weights

    dense: Any = load_causal_lm(resolve_weights(p.space.model), "fp32")[0]  # a transformers model
    targets = dict(dense.named_modules())
    merged = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            key = name.removeprefix("base_model.model.")
            if key not in p.plan.module_choices():
                continue
            weight = dequantized_weight(getattr(module, "base_layer", module))  # any backend, dense included
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                a = module.lora_A["default"].weight.float()
                b = module.lora_B["default"].weight.float()
                weight = weight + float(module.scaling["default"]) * (b @ a).to(weight.device)
                merged += 1
            targets[key].weight.copy_(weight.to(targets[key].weight.device))
    dense.to(torch_dtype(p.space.training.compute_dtype))
    dense.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    log.info(f"merged: {merged} adapters into the dequantized base -> {folder}")
    return [f"merged/{name}" for name in sorted(x.name for x in folder.iterdir())]


def train_summary(run: TrainRun) -> list[str]:
    """The lines ``autoqra train`` prints at its end."""
    if run.status is not TrialStatus.OK:
        return [f"train: {run.status.value} ({run.error}); no adapter saved; wrote {run.out}/: "
                f"{', '.join(run.files)}"]
    m = run.metrics
    lines = [f"train: held-out loss {m.initial_eval_loss:.4f} -> {m.eval_loss:.4f} "
             f"(perplexity {m.perplexity:.2f})" + (f", accuracy {m.accuracy:.4f}" if m.accuracy is not None else "")
             + f" after {len(run.train_losses)} steps in {run.seconds:.0f} s"]
    if len(run.evaluations) > 1:
        lines.append("held-out loss along the way: " + ", ".join(f"step {s}: {v:.4f}" for s, v in run.evaluations))
    lines.append(f"wrote {run.out}/: {', '.join(run.files)}")
    if not all(math.isfinite(v) for _, v in run.evaluations):
        lines.append("warning: a held-out evaluation was not finite")
    return lines
