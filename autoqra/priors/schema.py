"""The priors file: versioned, tied to a model and granularity; a mismatch is an error, never zeros."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoqra.domain import first_error, lists_to_tuples
from autoqra.errors import AutoQRAError

PRIORS_SCHEMA = "autoqra.priors/1"
_FROZEN = ConfigDict(frozen=True, extra="forbid", strict=True)


class PriorsError(AutoQRAError):
    """A priors file that is malformed, of another schema, or made for another model or grouping."""


class GroupPrior(BaseModel):
    model_config = _FROZEN

    name: str = Field(min_length=1)
    modules: tuple[str, ...] = Field(min_length=1)
    sensitivity: float = Field(ge=0)  # mean per-token KL(16-bit || group at the lowest bit-width)
    demand: float = Field(ge=0)  # mean squared LoRA gradient norm of the group over a few batches


class Priors(BaseModel):
    """Per-group importance scores measured on one model, task and granularity."""

    model_config = _FROZEN

    schema_id: Literal["autoqra.priors/1"] = Field(default=PRIORS_SCHEMA, alias="schema")
    model: str
    weights_fingerprint: str
    task: str
    granularity: Literal["block", "module"]
    lowest_format: str  # label of the format used for sensitivity, e.g. hqq2-g64
    calibration_sequences: int = Field(ge=1)
    seq_len: int = Field(ge=8)
    groups: tuple[GroupPrior, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Priors:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError("group names repeat")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "priors") -> Priors:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PriorsError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("schema") != PRIORS_SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise PriorsError(f"{source}: not an autoqra priors file of schema {PRIORS_SCHEMA} (found {found!r})")
        try:
            return cls.model_validate(lists_to_tuples(data))
        except ValidationError as exc:
            raise PriorsError(f"{source}: {first_error(exc)}") from None

    def check_matches(self, groups: tuple[tuple[str, tuple[str, ...]], ...], fingerprint: str | None,
                      source: str) -> None:
        """Raise PriorsError unless these priors were measured for exactly these groups and weights
        (``fingerprint`` None: the groups only, before the weights are resolved)."""
        if fingerprint is not None and fingerprint != self.weights_fingerprint:
            raise PriorsError(f"{source}: measured on other weights ({self.weights_fingerprint}, now {fingerprint})")
        mine = tuple((g.name, g.modules) for g in self.groups)
        if mine != tuple(groups):
            raise PriorsError(f"{source}: its {len(mine)} groups do not match the model's {len(groups)} "
                              f"{self.granularity} groups")
