"""Search spaces: a YAML file (one preset per file in ``search_spaces/``) parsed strictly.

A space names the model, the granularity of the per-layer choices, the format ladder and the LoRA
ranks, the training setup the memory budget refers to, the fidelities of trials and the task.
Unknown keys, wrong types, duplicate choices and formats that cannot store the model's layers are
errors with one clear line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoqra.domain import Fidelity, Plan, PlanGroup, QuantFormat, first_error, lists_to_tuples
from autoqra.errors import AutoQRAError, FormatError, SpaceError
from autoqra.space.formats import DTYPE_BYTES, check_storable, weight_storage_bytes
from autoqra.space.memory import OPTIMIZERS, TrainingSetup
from autoqra.space.model_spec import ModelSpec

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SPACE_VERSION = 1
PRESET_PACKAGE = "autoqra.search_spaces"  # the top-level search_spaces/ folder, shipped as package data
DEFAULT_PRESET = "default"
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class Choices(BaseModel):
    model_config = _STRICT

    formats: tuple[QuantFormat, ...] = Field(min_length=1)
    ranks: tuple[int, ...] = Field(min_length=1)

    @field_validator("ranks")
    @classmethod
    def _ranks(cls, ranks: tuple[int, ...]) -> tuple[int, ...]:
        if any(r < 0 or r > 4096 for r in ranks):
            raise ValueError("ranks must be in 0..4096")
        if len(set(ranks)) != len(ranks):
            raise ValueError("ranks must not repeat")
        return tuple(sorted(ranks))

    @field_validator("formats")
    @classmethod
    def _formats(cls, formats: tuple[QuantFormat, ...]) -> tuple[QuantFormat, ...]:
        if len(set(formats)) != len(formats):
            raise ValueError("formats must not repeat")
        return formats


class TrainingSection(BaseModel):
    model_config = _STRICT

    batch_size: int = Field(default=8, ge=1, le=65_536)
    seq_len: int = Field(default=512, ge=8, le=1_048_576)
    grad_checkpointing: bool = False
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] = "adamw"
    compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    lora_alpha_ratio: float = Field(default=2.0, gt=0, le=1024)  # alpha = ratio x rank

    def setup(self) -> TrainingSetup:
        assert self.optimizer in OPTIMIZERS
        return TrainingSetup(
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            grad_checkpointing=self.grad_checkpointing,
            optimizer=self.optimizer,
            compute_dtype=self.compute_dtype,
        )


class SearchSpace(BaseModel):
    """One validated search-space file."""

    model_config = _STRICT

    version: Literal[1] = SPACE_VERSION
    name: str = Field(min_length=1)
    description: str = ""
    model: str = Field(min_length=1)
    granularity: Literal["block", "module"] = "block"
    choices: Choices
    training: TrainingSection = TrainingSection()
    fidelities: dict[str, Fidelity]
    task: str = Field(default="news", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _fidelity_names(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("fidelities"), dict):
            data = dict(data)
            data["fidelities"] = {
                k: ({"name": k, **v} if isinstance(v, dict) else v) for k, v in data["fidelities"].items()
            }
        return data

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        for needed in ("low", "high"):
            if needed not in self.fidelities:
                raise ValueError(f"fidelities must define {needed!r} (has {sorted(self.fidelities)})")
        dtype = self.training.compute_dtype
        for fmt in self.choices.formats:
            if not fmt.quantized and fmt.name != dtype:
                raise ValueError(
                    f"unquantized format {fmt.name} must match training.compute_dtype {dtype}"
                )
        return self

    @property
    def setup(self) -> TrainingSetup:
        return self.training.setup()

    def ladder(self, spec: ModelSpec) -> tuple[QuantFormat, ...]:
        """The formats ordered by stored bytes on this model, smallest first."""
        compute_bytes = DTYPE_BYTES[self.training.compute_dtype]

        def cost(fmt: QuantFormat) -> int:
            return sum(weight_storage_bytes(fmt, l.out_features, l.in_features, compute_bytes) for l in spec.linears)

        return tuple(sorted(self.choices.formats, key=cost))

    def check_model(self, spec: ModelSpec) -> None:
        """Raise SpaceError if some format cannot store some layer of ``spec``."""
        for fmt in self.choices.formats:
            for lin in spec.linears:
                try:
                    check_storable(fmt, lin.out_features, lin.in_features)
                except FormatError as exc:
                    raise SpaceError(f"space {self.name}: {exc} ({lin.name})") from None

    def with_model(self, model: str) -> SearchSpace:
        return self.model_copy(update={"model": model})


def _presets() -> Traversable:
    from importlib.resources import files

    try:
        return files(PRESET_PACKAGE)
    except ModuleNotFoundError:
        # the package imported from a source tree without the install's mapping (a Ray job's
        # --working-dir copy, a git worktree): the presets are the checkout's search_spaces/ folder
        checkout = Path(__file__).resolve().parents[2] / "search_spaces"
        if checkout.is_dir():
            return checkout
        raise SpaceError(f"the preset spaces ({PRESET_PACKAGE}) are not installed; reinstall autoqra "
                         "(`pip install -e .` in a checkout, or `make setup`)") from None


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in _presets().iterdir() if p.name.endswith(".yaml"))


def load_space(ref: str | Path = DEFAULT_PRESET) -> SearchSpace:
    """Load a space from a YAML path or a preset name (a file of the package ``autoqra.search_spaces``)."""
    path = Path(ref).expanduser()
    source: Path | Traversable = path
    if not path.is_file():
        preset = _presets() / f"{ref}.yaml"
        if str(ref).endswith((".yaml", ".yml")) or "/" in str(ref) or not preset.is_file():
            raise SpaceError(
                f"search space {str(ref)!r} is neither a file nor a preset (presets: {', '.join(preset_names())})"
            )
        source = preset
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{source}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_space(text, source=str(source))


def parse_space(text: str, source: str = "space") -> SearchSpace:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpaceError(f"{source}: not valid YAML{line}: {problem}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. absurd YAML tags or nesting
        raise SpaceError(f"{source}: not valid YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: a search space must be a YAML mapping, got {type(data).__name__}")
    if "version" in data and data["version"] != SPACE_VERSION:
        raise SpaceError(f"{source}: space version {data['version']!r} is not supported (reads {SPACE_VERSION})")
    try:
        return SearchSpace.model_validate(lists_to_tuples(data))
    except ValidationError as exc:
        raise SpaceError(f"{source}: {first_error(exc)}") from None
    except AutoQRAError as exc:
        raise SpaceError(f"{source}: {exc}") from None


def uniform_plan(spec: ModelSpec, fmt: QuantFormat, rank: int, granularity: str = "block") -> Plan:
    """Every block linear of ``spec`` in ``fmt`` with LoRA rank ``rank``."""
    groups = tuple(
        PlanGroup(name=name, modules=modules, format=fmt, rank=rank) for name, modules in spec.groups(granularity)
    )
    return Plan(model=spec.name, granularity=granularity, groups=groups)
