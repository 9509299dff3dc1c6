"""The training loop of a trial: AdamW on the adapters (torch's, or bitsandbytes' 8-bit and paged
8-bit AdamW when the space's ``training.optimizer`` says so, exactly as the memory model prices them),
warm-up + cosine schedule, gradient accumulation, clipping, seeded batches; NaN or exploding loss ends
it as ``diverged``, running out of memory as ``oom`` (results, not exceptions)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoqra.domain import TrialStatus
from autoqra.errors import AutoQRAError
from autoqra.space.memory import OptimizerName
from autoqra.trials.data import IGNORE, TaskData, first_integer

if TYPE_CHECKING:
    import torch
    from torch import nn

DIVERGENCE_FACTOR = 10.0  # a loss this many times the first one counts as divergence
#: optimizer names of a space -> bitsandbytes class names (torch's AdamW is "adamw")
BNB_OPTIMIZERS = {"adamw8bit": "AdamW8bit", "paged_adamw8bit": "PagedAdamW8bit"}


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    grad_accum: int = 1
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: OptimizerName = "adamw"


@dataclass(frozen=True)
class TrainOutcome:
    status: TrialStatus
    losses: tuple[float, ...]
    error: str
    optimizer: Any  # the optimizer, kept so its states can be measured


def lr_lambda(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def make_optimizer(name: OptimizerName, params: list[torch.nn.Parameter], learning_rate: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """torch AdamW, or bitsandbytes' block-wise 8-bit AdamW / its paged variant (both run on CPU too).

    bitsandbytes keeps float32 states for tensors under 4096 elements and uint8 states with a float32
    absmax per 256 elements above, which is what ``space/memory.py`` counts for these names.
    """
    import torch

    if name == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    import bitsandbytes.optim as bnb_optim

    return getattr(bnb_optim, BNB_OPTIMIZERS[name])(params, lr=learning_rate, weight_decay=weight_decay)


def check_optimizer(name: OptimizerName, space_name: str) -> None:
    """Raise AutoQRAError unless :func:`make_optimizer` can build ``name`` here (before any trial)."""
    if name == "adamw":
        return
    try:
        import bitsandbytes.optim as bnb_optim
    except ImportError as exc:
        raise AutoQRAError(f"space {space_name}: training.optimizer {name} needs bitsandbytes' 8-bit optimizers, "
                           f"which cannot be imported here ({exc}); use adamw") from None
    if not hasattr(bnb_optim, BNB_OPTIMIZERS[name]):
        raise AutoQRAError(f"space {space_name}: this bitsandbytes has no {name} optimizer; use adamw")


def train(model: nn.Module, data: TaskData, config: TrainConfig, seed: int, device: str,
          on_step: Callable[[int, float], None] | None = None) -> TrainOutcome:
    """Train the model's trainable parameters; ``on_step(step, loss)`` is called after every optimizer
    step (progress and periodic evaluation; it must not draw from torch's RNG or change the model)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config.optimizer, params, config.learning_rate, config.weight_decay)
    warmup = max(1, int(config.warmup_ratio * config.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, config.steps, warmup))
    generator = torch.Generator().manual_seed(seed)
    n = data.train_ids.shape[0]
    losses: list[float] = []
    model.train()
    try:
        for _ in range(config.steps):
            # zeroed at the start of a step, so the last step's gradients stay for the footprint measurement
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(config.grad_accum):
                rows = torch.randint(n, (config.batch_size,), generator=generator)
                ids = data.train_ids[rows].to(device)
                labels = data.train_labels[rows].to(device)
                loss = model(input_ids=ids, labels=labels).loss / config.grad_accum
                loss.backward()
                step_loss += float(loss.detach())
            losses.append(step_loss)
            if not math.isfinite(step_loss) or step_loss > DIVERGENCE_FACTOR * max(losses[0], 1e-3):
                return TrainOutcome(TrialStatus.DIVERGED, tuple(losses), f"loss {step_loss:.4g} at step {len(losses)}",
                                    optimizer)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if on_step is not None:
                on_step(len(losses), step_loss)
                model.train()  # an evaluation in on_step may have switched to eval mode
    except (RuntimeError, MemoryError) as exc:
        if isinstance(exc, MemoryError) or is_oom(exc):
            return TrainOutcome(TrialStatus.OOM, tuple(losses), f"out of memory: {str(exc).splitlines()[0][:200]}",
                                optimizer)
        raise
    return TrainOutcome(TrialStatus.OK, tuple(losses), "", optimizer)


def eval_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, batch_size: int, device: str) -> float:
    """Mean loss over every scored token of the held-out rows."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            x = ids[start:start + batch_size].to(device)
            y = labels[start:start + batch_size].to(device)
            logits = model(input_ids=x).logits.float()
            shift_logits, shift_labels = logits[:, :-1], y[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                ignore_index=IGNORE, reduction="sum")
            total += float(loss)
            count += int((shift_labels != IGNORE).sum())
    return total / max(count, 1)


def eval_accuracy(model: nn.Module, tokenizer: Any, data: TaskData, device: str, max_new_tokens: int = 8) -> float:
    """Exact match of the first integer in the greedy continuation against the answer."""
    import torch

    correct = 0
    with torch.no_grad():
        for item in data.generation:
            ids = tokenizer(item.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            correct += first_integer(text) == item.answer.strip()
    return correct / max(1, len(data.generation))
