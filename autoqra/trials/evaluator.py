"""Evaluator: ``evaluate(plan, fidelity, seed) -> TrialResult`` with a real quantized-LoRA training run.

A trial-level failure (divergence, out of memory) is a result with that status; only setup and
programming errors raise. Per process the evaluator keeps the resolved weights, the tokenized task
data per fidelity shape and the quantized-layer cache, so each trial only reloads the base model
(~0.3 s for the default) and takes its quantized layers from the cache.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autoqra.domain import NO_ADAPTER_MESSAGE, Fidelity, PhaseSeconds, Plan, TrialMetrics, TrialResult, TrialStatus
from autoqra.space.memory import MemoryModel, OptimizerName, TrainingSetup
from autoqra.space.model_spec import model_spec, spec_from_config
from autoqra.trials.backends import execution_dtype
from autoqra.trials.data import TaskData, build_task
from autoqra.trials.footprint import measure_footprint
from autoqra.trials.layer_cache import LayerCache
from autoqra.trials.lora import attach_lora, init_default, init_from_residuals
from autoqra.trials.models import Weights, cache_root, load_causal_lm, resolve_device, resolve_weights
from autoqra.trials.quantize import quantize_model
from autoqra.trials.train import TrainConfig, TrainOutcome, eval_accuracy, eval_loss, train

if TYPE_CHECKING:
    from autoqra.space.search_space import SearchSpace

_VERSIONED = ("torch", "transformers", "peft", "hqq", "bitsandbytes", "autoqra")


@dataclass(frozen=True)
class EvaluatorConfig:
    model: str = "smollm2-135m"
    task: str = "news"
    compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    device: str = "auto"  # "auto": cuda when available, else cpu
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.1
    alpha_ratio: float = 2.0
    init: Literal["default", "loftq"] = "default"
    grad_checkpointing: bool = False
    optimizer: OptimizerName = "adamw"
    data_seed: int = 0
    cache_dir: Path | None = None  # quantized-layer cache root; None: the user cache (models.cache_root)

    @classmethod
    def for_space(cls, space: SearchSpace, task: str | None = None, **settings: Any) -> EvaluatorConfig:
        """The trials of ``space``: its model and ``training`` section, on ``task`` (the space's own when
        None); ``settings`` are the fields a space does not fix (device, init, grad_checkpointing, ...)."""
        t = space.training
        return cls(model=space.model, task=task if task is not None else space.task, compute_dtype=t.compute_dtype,
                   learning_rate=t.learning_rate, warmup_ratio=t.warmup_ratio, alpha_ratio=t.lora_alpha_ratio,
                   optimizer=t.optimizer, **settings)


def library_versions() -> tuple[tuple[str, str], ...]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in _VERSIONED:
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            out.append((name, "not installed"))
    return tuple(out)


class Evaluator:
    """Runs real trials of plans for one model and task."""

    def __init__(self, config: EvaluatorConfig, model_loader: Any = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        # what the trials compute in: the setup's dtype where this hardware is fast at it, else fp32
        self.dtype = execution_dtype(config.compute_dtype, self.device)
        self._loader = model_loader
        if model_loader is None:
            self.weights: Weights | None = resolve_weights(config.model)
            self.spec = model_spec(config.model)
            fingerprint = self.weights.fingerprint
        else:  # in-process models (tests): a callable returning (model, tokenizer)
            self.weights = None
            model, _ = model_loader()
            self.spec = spec_from_config(model.config, config.model)
            fingerprint = None
        root = config.cache_dir if config.cache_dir is not None else cache_root()
        self.layer_cache = LayerCache(root if fingerprint else None, fingerprint or "in-process")
        self._data: dict[tuple[int, int, int], TaskData] = {}
        self._versions = library_versions()

    # -- public ------------------------------------------------------------------------------
    def evaluate(self, plan: Plan, fidelity: Fidelity, seed: int) -> TrialResult:
        import torch

        self.spec.check_plan(plan)
        cfg = self.config
        setup = TrainingSetup(batch_size=fidelity.batch_size, seq_len=fidelity.seq_len, optimizer=cfg.optimizer,
                              grad_checkpointing=cfg.grad_checkpointing, compute_dtype=cfg.compute_dtype)
        predicted = MemoryModel(self.spec, setup).total(plan)
        if not plan.has_adapters:
            # a valid plan of any space with rank 0 among its choices, but not a fine-tuning run: the
            # search records it as a failed trial instead of stopping
            return self._untrainable(plan, fidelity, seed, predicted)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        t0 = time.perf_counter()
        model, tokenizer = self._load()
        data = self._task_data(tokenizer, fidelity)
        t1 = time.perf_counter()
        model = self._build(model, plan, seed)
        t2 = time.perf_counter()
        outcome, metrics, objective, train_s = self._train_and_score(model, tokenizer, data, fidelity, seed)
        t4 = time.perf_counter()

        footprint = measure_footprint(model, outcome.optimizer)
        measured_peak = int(torch.cuda.max_memory_allocated()) if self.device == "cuda" else None
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return TrialResult(
            plan=plan, fidelity=fidelity, task=cfg.task, seed=seed, status=outcome.status, objective=objective,
            metric_name="accuracy" if data.metric == "accuracy" else "eval_loss", metrics=metrics,
            train_losses=outcome.losses, predicted_peak_bytes=predicted, measured_peak_bytes=measured_peak,
            measured_static_bytes=footprint.total, peak_rss_bytes=None if self.device == "cuda" else rss,
            device=self.device, execution_dtype=self.dtype,
            phases=PhaseSeconds(load_s=t1 - t0, build_s=t2 - t1, train_s=train_s, eval_s=t4 - t2 - train_s),
            versions=self._versions, error=outcome.error,
        )

    def build_model(self, plan: Plan, seed: int) -> tuple[Any, Any]:
        """The model a trial of ``plan`` trains (quantized base, adapters initialised from ``seed``) and
        its tokenizer; ``autoqra train`` uses it, so a training run is a trial's model, trained longer."""
        self.spec.check_plan(plan)
        plan.check_trainable()
        model, tokenizer = self._load()
        return self._build(model, plan, seed), tokenizer

    def task_data(self, tokenizer: Any, fidelity: Fidelity) -> TaskData:
        """The tokenized task at ``fidelity``'s shape (cached per shape)."""
        return self._task_data(tokenizer, fidelity)

    def train_and_score(self, model: Any, tokenizer: Any, data: TaskData, fidelity: Fidelity, seed: int,
                        on_step: Callable[[int, float], None] | None = None
                        ) -> tuple[TrainOutcome, TrialMetrics, float | None, float]:
        """A trial's training run and held-out scoring (see :meth:`_train_and_score`)."""
        return self._train_and_score(model, tokenizer, data, fidelity, seed, on_step)

    # -- parts -------------------------------------------------------------------------------
    def _build(self, model: Any, plan: Plan, seed: int) -> Any:
        """Quantize the base (layers from the cache), attach the adapters and initialise them."""
        import torch

        cfg = self.config
        originals = self._originals(model, plan) if cfg.init == "loftq" else {}
        quantize_model(model, plan, self.dtype, self.device, cache=self.layer_cache, storage_dtype=cfg.compute_dtype)
        model = attach_lora(model, plan, alpha_ratio=cfg.alpha_ratio)
        if originals:
            init_from_residuals(model, originals)
        else:
            init_default(model, torch.Generator().manual_seed(seed))
        model.to(self.device)
        if cfg.grad_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        return model

    def _train_and_score(self, model: Any, tokenizer: Any, data: TaskData, fidelity: Fidelity, seed: int,
                         on_step: Callable[[int, float], None] | None = None
                         ) -> tuple[TrainOutcome, TrialMetrics, float | None, float]:
        """Held-out and probe losses before, the training run, then the held-out metrics after.

        Returns the training outcome (``diverged`` too when the held-out loss is not finite), the
        metrics, the objective (None unless it ended ok) and the training loop's wall seconds
        (evaluations count as eval time).
        """
        cfg = self.config
        batch = fidelity.batch_size
        model.eval()
        initial = eval_loss(model, data.eval_ids, data.eval_labels, batch, self.device)
        probe = (data.train_ids[:batch], data.train_labels[:batch])
        probe_before = eval_loss(model, *probe, batch, self.device)
        started = time.perf_counter()
        outcome = train(model, data, TrainConfig(steps=fidelity.steps, batch_size=batch, grad_accum=fidelity.grad_accum,
                                                 learning_rate=cfg.learning_rate, warmup_ratio=cfg.warmup_ratio,
                                                 optimizer=cfg.optimizer), seed, self.device, on_step)
        train_s = time.perf_counter() - started
        metrics = TrialMetrics(initial_eval_loss=initial, probe_train_loss_before=probe_before)
        if outcome.status is not TrialStatus.OK:
            return outcome, metrics, None, train_s
        model.eval()
        loss = eval_loss(model, data.eval_ids, data.eval_labels, batch, self.device)
        if not math.isfinite(loss):
            diverged = dataclasses.replace(outcome, status=TrialStatus.DIVERGED, error=f"held-out loss {loss}")
            return diverged, metrics, None, train_s
        probe_after = eval_loss(model, *probe, batch, self.device)
        accuracy = eval_accuracy(model, tokenizer, data, self.device) if data.metric == "accuracy" else None
        metrics = TrialMetrics(eval_loss=loss, perplexity=math.exp(min(loss, 50.0)), accuracy=accuracy,
                               initial_eval_loss=initial, probe_train_loss_before=probe_before,
                               probe_train_loss_after=probe_after)
        return outcome, metrics, accuracy if accuracy is not None else -loss, train_s

    def _untrainable(self, plan: Plan, fidelity: Fidelity, seed: int, predicted: int) -> TrialResult:
        return TrialResult(
            plan=plan, fidelity=fidelity, task=self.config.task, seed=seed, status=TrialStatus.FAILED, objective=None,
            metric_name="eval_loss", metrics=TrialMetrics(), train_losses=(), predicted_peak_bytes=predicted,
            measured_peak_bytes=None, measured_static_bytes=0, peak_rss_bytes=None, device=self.device,
            execution_dtype=self.dtype, phases=PhaseSeconds(), versions=self._versions,
            error=NO_ADAPTER_MESSAGE,
        )

    def _load(self) -> tuple[Any, Any]:
        if self._loader is not None:
            return self._loader()
        assert self.weights is not None
        return load_causal_lm(self.weights, "fp32")  # fp32: quantize (and LoftQ) from full precision

    def _task_data(self, tokenizer: Any, fidelity: Fidelity) -> TaskData:
        rows = fidelity.steps * fidelity.batch_size * fidelity.grad_accum
        key = (fidelity.seq_len, fidelity.eval_examples, rows)
        if key not in self._data:
            self._data[key] = build_task(self.config.task, tokenizer, fidelity.seq_len, fidelity.eval_examples,
                                         train_rows=max(rows, 64), data_seed=self.config.data_seed)
        return self._data[key]

    @staticmethod
    def _originals(model: Any, plan: Plan) -> dict[str, Any]:
        modules = dict(model.named_modules())
        return {name: modules[name].weight.detach().clone()
                for name, (fmt, rank) in plan.module_choices().items() if rank > 0 and fmt.quantized}
