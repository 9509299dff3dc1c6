"""User-facing errors.

Every error a user can provoke with bad input is an :class:`AutoQRAError`; the CLI prints its
one-line message and exits with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AutoQRAError(Exception):
    """Base class: carries a one-line message meant for the user."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self)


class BudgetError(AutoQRAError):
    """A budget string that cannot be parsed or is out of range."""


class SpaceError(AutoQRAError):
    """A search-space YAML file that is missing, malformed or inconsistent."""


class PlanError(AutoQRAError):
    """A plan that is malformed or does not fit the model."""


class FormatError(AutoQRAError):
    """A quantization format that is unknown or cannot store a given layer."""


class ModelSpecError(AutoQRAError):
    """A model name, path or config that cannot be resolved into a model spec."""


class InfeasibleBudget(AutoQRAError):
    """No plan in the search space fits the budget; the message states the minimum."""

    def __init__(self, message: str, minimum_bytes: int) -> None:
        super().__init__(message)
        self.minimum_bytes = minimum_bytes
