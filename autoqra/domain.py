"""Frozen value types passed between the parts of autoqra.

A :class:`Plan` is the per-layer assignment the whole product revolves around: for each group of
linear layers (one transformer block, or one module) a storage format and a LoRA rank. Plans are
hashable, round-trip through JSON, and carry a schema version (``PLAN_VERSION``); see
``docs/plan-format.md``.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoqra.errors import PlanError

PLAN_VERSION = 1
NO_ADAPTER_MESSAGE = "plan gives every module rank 0: it has no LoRA adapter, nothing to train"

FormatName = Literal["hqq", "nf4", "int8", "bf16", "fp16", "fp32"]

#: bit-widths each backend can store (HQQ 5/6 bits are stored one code per byte, like 8 bits)
FORMAT_BITS: dict[str, tuple[int, ...]] = {
    "hqq": (1, 2, 3, 4, 5, 6, 8),
    "nf4": (4,),
    "int8": (8,),
    "bf16": (16,),
    "fp16": (16,),
    "fp32": (32,),
}
#: default group size (HQQ) / block size (bitsandbytes NF4)
DEFAULT_GROUP_SIZE = {"hqq": 64, "nf4": 64}
QUANTIZED_FORMATS = frozenset({"hqq", "nf4", "int8"})

_FROZEN = ConfigDict(frozen=True, extra="forbid", strict=True)


class QuantFormat(BaseModel):
    """How one linear layer's frozen weight is stored.

    ``hqq``: HQQ affine quantization, ``bits`` in 1..8, scale and zero per ``group_size`` weights,
    stored in the compute dtype. ``nf4``: bitsandbytes NF4 with ``group_size`` as its block size,
    optionally double-quantized absmax. ``int8``: bitsandbytes LLM.int8 (row-wise scale).
    ``bf16``/``fp16``/``fp32``: not quantized.
    """

    model_config = _FROZEN

    name: FormatName
    bits: int
    group_size: int | None = None
    double_quant: bool = False

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            name = data.get("name")
            if isinstance(name, str) and name in FORMAT_BITS:
                if "bits" not in data and len(FORMAT_BITS[name]) == 1:
                    data["bits"] = FORMAT_BITS[name][0]
                if data.get("group_size") is None and name in DEFAULT_GROUP_SIZE:
                    data["group_size"] = DEFAULT_GROUP_SIZE[name]
        return data

    @model_validator(mode="after")
    def _check(self) -> QuantFormat:
        allowed = FORMAT_BITS[self.name]
        if self.bits not in allowed:
            raise ValueError(f"format {self.name} stores {allowed} bits, not {self.bits}")
        if self.name in DEFAULT_GROUP_SIZE:
            assert self.group_size is not None
            if self.group_size < 8 or self.group_size % 8:
                raise ValueError(f"group_size must be a positive multiple of 8, got {self.group_size}")
        elif self.group_size is not None:
            raise ValueError(f"format {self.name} takes no group_size")
        if self.double_quant and self.name != "nf4":
            raise ValueError("double_quant applies to nf4 only")
        return self

    @property
    def quantized(self) -> bool:
        return self.name in QUANTIZED_FORMATS

    @property
    def label(self) -> str:
        """Short human label, e.g. ``hqq4-g64``, ``nf4-dq``, ``bf16``."""
        if self.name == "hqq":
            return f"hqq{self.bits}-g{self.group_size}"
        if self.name == "nf4":
            suffix = "-dq" if self.double_quant else ""
            return f"nf4{suffix}" if self.group_size == 64 else f"nf4{suffix}-b{self.group_size}"
        return self.name


class PlanGroup(BaseModel):
    """One group of linear layers sharing a format and a LoRA rank (0 = no adapter)."""

    model_config = _FROZEN

    name: str = Field(min_length=1)
    modules: tuple[str, ...] = Field(min_length=1)
    format: QuantFormat
    rank: int = Field(ge=0, le=4096)


class Plan(BaseModel):
    """The per-layer assignment: exact module names to (format, rank), versioned."""

    model_config = _FROZEN

    version: Literal[1] = PLAN_VERSION
    model: str = Field(min_length=1)
    granularity: Literal["block", "module"]
    groups: tuple[PlanGroup, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_modules(self) -> Plan:
        seen: set[str] = set()
        names: set[str] = set()
        for group in self.groups:
            if group.name in names:
                raise ValueError(f"group name {group.name!r} appears twice")
            names.add(group.name)
            for module in group.modules:
                if module in seen:
                    raise ValueError(f"module {module!r} is assigned twice")
                seen.add(module)
        return self

    # --- JSON edge -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> Plan:
        if isinstance(data, dict) and "version" in data and data["version"] != PLAN_VERSION:
            raise PlanError(
                f"{source}: plan schema version {data['version']!r} is not supported "
                f"(this autoqra reads version {PLAN_VERSION})"
            )
        try:
            return cls.model_validate(lists_to_tuples(data))
        except ValidationError as exc:
            raise PlanError(f"{source}: {first_error(exc)}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source)

    # --- queries ----------------------------------------------------------------------------
    @property
    def plan_hash(self) -> str:
        """Stable content hash (16 hex digits) of the canonical JSON form."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def module_choices(self) -> dict[str, tuple[QuantFormat, int]]:
        """Exact module name -> (format, rank)."""
        return {m: (g.format, g.rank) for g in self.groups for m in g.modules}

    @property
    def has_adapters(self) -> bool:
        """Whether some group has a LoRA adapter (rank > 0): a plan without one has nothing to train."""
        return any(group.rank > 0 for group in self.groups)

    def check_trainable(self) -> None:
        """Raise PlanError unless the plan has at least one adapter to train."""
        if not self.has_adapters:
            raise PlanError(NO_ADAPTER_MESSAGE)


def lists_to_tuples(data: Any) -> Any:
    """JSON/YAML lists as tuples, so strict frozen models accept them (they hold tuples)."""
    if isinstance(data, list):
        return tuple(lists_to_tuples(v) for v in data)
    if isinstance(data, dict):
        return {k: lists_to_tuples(v) for k, v in data.items()}
    return data


def first_error(exc: ValidationError) -> str:
    """The first pydantic error as one line: ``location: message``."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err.get("loc", ()))
    msg = str(err.get("msg", "invalid value")).replace("Value error, ", "")
    return f"{loc}: {msg}" if loc else msg


class Fidelity(BaseModel):
    """How much training a trial gets: named levels (micro, low, high) live in the search space."""

    model_config = _FROZEN

    name: str = Field(min_length=1)
    steps: int = Field(ge=1, le=1_000_000)
    batch_size: int = Field(ge=1, le=65_536)
    seq_len: int = Field(ge=8, le=1_048_576)
    eval_examples: int = Field(ge=1, le=1_000_000)
    grad_accum: int = Field(default=1, ge=1, le=4096)


BudgetKind = Literal["bytes", "bits", "qlora", "percent"]


class Budget(BaseModel):
    """A parsed budget string; ``autoqra.space.budget.resolve`` turns it into peak bytes."""

    model_config = _FROZEN

    text: str
    kind: BudgetKind
    value: float


class TrialStatus(StrEnum):
    """How a trial ended. Only ``ok`` results carry an objective."""

    OK = "ok"
    DIVERGED = "diverged"  # loss became NaN/inf or exploded
    OOM = "oom"  # the device ran out of memory
    FAILED = "failed"  # another trial-level failure, described in ``error``


class TrialMetrics(BaseModel):
    """Raw held-out metrics of a trial."""

    model_config = _FROZEN

    eval_loss: float | None = None
    perplexity: float | None = None
    accuracy: float | None = None
    initial_eval_loss: float | None = None  # before training (the adapters' starting point)
    probe_train_loss_before: float | None = None  # loss on a fixed batch of training rows, before training
    probe_train_loss_after: float | None = None  # ... and after: a low-noise "training loss falls" signal


class PhaseSeconds(BaseModel):
    """Wall seconds per phase of a trial."""

    model_config = _FROZEN

    load_s: float = 0.0
    build_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0


class TrialResult(BaseModel):
    """The outcome of training and evaluating one plan at one fidelity (DESIGN.md §3)."""

    model_config = _FROZEN

    plan: Plan
    fidelity: Fidelity
    task: str
    seed: int
    status: TrialStatus
    objective: float | None  # higher is better; None unless status is ok
    metric_name: str  # "eval_loss" or "accuracy": what the objective is made of
    metrics: TrialMetrics
    train_losses: tuple[float, ...]
    predicted_peak_bytes: int
    measured_peak_bytes: int | None  # CUDA max_memory_allocated; None on CPU
    measured_static_bytes: int  # parameters, buffers, backend tensors, grads, optimizer states
    peak_rss_bytes: int | None  # process peak resident memory (CPU runs)
    device: str
    phases: PhaseSeconds
    versions: tuple[tuple[str, str], ...]
    error: str = ""
    # the dtype the trial computed in (fp32 where the device has no fast kernels for the setup's
    # 16-bit dtype, see trials.backends.execution_dtype); None in records written before 2026-12-04
    execution_dtype: str | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


TRIAL_SEEDS = "common"  # what derive_seed keys a trial seed by; was "per-plan" (run seed, plan hash, fidelity)


def derive_seed(run_seed: int, fidelity: str) -> int:
    """A trial's seed from (run seed, fidelity): every plan of a run trains at a fidelity with the same
    seed, hence the same batch order and adapter-init stream (common random numbers), so the search
    compares plans, not seeds; retries and resumes reproduce it. On `codebook` a `final` seed moves
    every plan alike by ~0.07 nats, more than the differences a final selection has to resolve; with a
    seed per plan (the derivation before 2026-12-03) that shift decided which plan was chosen."""
    digest = hashlib.sha256(f"{run_seed}:{fidelity}".encode()).hexdigest()
    return int(digest[:8], 16)
