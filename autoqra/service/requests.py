"""What a user asks of autoqra, checked in full before any model load, measurement, training or output.

A request is a frozen value built from what the user gave (strings, numbers, paths). Building one
checks the values themselves (a budget string that parses, a known strategy and preset, a positive
trial budget); its ``prepare_*`` function then checks everything that needs the file system or the
model's config: the space, the model, the task file, a priors file, output paths that can be
written, a budget some plan reaches. Every failure is an :class:`~autoqra.errors.AutoQRAError` with
one line, raised before anything is printed, created or loaded, so the CLI exits 2 having done
nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autoqra.domain import Plan, QuantFormat, first_error
from autoqra.errors import AutoQRAError, PlanError
from autoqra.priors.schema import Priors
from autoqra.space.budget import parse_budget
from autoqra.space.model_spec import ModelSpec, model_spec
from autoqra.space.search_space import SearchSpace, load_space, uniform_plan

Device = Literal["auto", "cpu", "cuda"]
DEVICES = ("auto", "cpu", "cuda")
STRATEGIES_WITH_PRIORS = ("autoqra", "sequential")


# -- shared checks ------------------------------------------------------------------------------
def check_device(device: str) -> None:
    if device not in DEVICES:
        raise AutoQRAError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")


def resolve_space(space: str | Path, model: str | None) -> tuple[SearchSpace, ModelSpec]:
    """The space (a preset name or YAML path), with ``model`` overriding its model, and the model's spec."""
    loaded = load_space(space)
    if model is not None:
        if not model.strip():
            raise AutoQRAError("--model is empty")
        loaded = loaded.with_model(model)
    spec = model_spec(loaded.model)
    loaded.check_model(spec)
    return loaded, spec


def resolve_trial_inputs(space: str | Path, model: str | None, task: str | None,
                         optimizer_needed: bool = True) -> tuple[SearchSpace, ModelSpec, str]:
    """What every command that trains or measures needs: the space and spec (see
    :func:`resolve_space`), weights that can be found, and the task (default: the space's) with its
    data; with ``optimizer_needed``, the space's optimizer must be buildable too."""
    from autoqra.trials.data import check_task
    from autoqra.trials.models import check_weights
    from autoqra.trials.train import check_optimizer

    resolved, spec = resolve_space(space, model)
    check_weights(resolved.model)
    chosen_task = task or resolved.task
    check_task(chosen_task)
    if optimizer_needed:
        check_optimizer(resolved.training.optimizer, resolved.name)
    return resolved, spec, chosen_task


def lowest_quantized(space: SearchSpace, spec: ModelSpec) -> QuantFormat:
    """The space's cheapest format, which the sensitivity prior is measured at; it must be quantized."""
    lowest = space.ladder(spec)[0]
    if not lowest.quantized:
        raise AutoQRAError(f"space {space.name} has no quantized format to measure sensitivity with")
    return lowest


def _existing_ancestor(path: Path) -> Path:
    current = path.absolute()
    while not current.exists():
        current = current.parent
    return current


def _probe(check: Callable[[], None], path: Path, what: str) -> None:
    """Run a path check; a folder that cannot even be looked into is a one-line error, not a traceback."""
    try:
        check()
    except OSError as exc:  # e.g. PermissionError from exists() below an unsearchable folder
        raise AutoQRAError(f"cannot use {what} {path}: {exc.strerror or exc}") from None


def _check_can_create_in(path: Path, what: str) -> None:
    """``path`` (not yet existing) could be created: its nearest existing ancestor is a writable folder.

    Writability is probed with a temporary file that is removed at once (``os.access`` says yes to
    root even on a read-only file system).
    """
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise AutoQRAError(f"cannot create {what} {path}: {ancestor} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise AutoQRAError(f"cannot create {what} {path}: {ancestor} is not writable ({exc.strerror or exc})") from None


def check_output_file(path: Path, what: str) -> None:
    """``path`` can be written as a file (it is one already, or it can be created)."""
    _probe(lambda: _check_output_file(path, what), path, what)


def _check_output_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise AutoQRAError(f"{what} {path} is a directory")
    if path.exists():
        try:
            with path.open("a"):
                pass
        except OSError as exc:
            raise AutoQRAError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
        return
    _check_can_create_in(path, what)


def write_output(path: Path, text: str) -> None:
    """Write a result file (its folder created); AutoQRAError in one line when the system refuses."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise AutoQRAError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_run_dir(path: Path) -> None:
    """A run directory that is new, or an existing folder without a run in it."""
    _probe(lambda: _check_run_dir(path), path, "run directory")


def _check_run_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise AutoQRAError(f"--out {path} exists and is not a directory")
    if (path / "trials.db").exists():
        raise AutoQRAError(f"--out {path} already holds a run (trials.db); choose a new directory "
                           "(nothing there was changed)")
    if path.is_dir():
        _check_can_create_in(path / ".autoqra-probe", "files in run directory")
    else:
        _check_can_create_in(path, "run directory")


def check_resume_dir(path: Path) -> None:
    """The run directory of a resumed run: it exists and this process may write in it."""
    if not path.is_dir():
        raise AutoQRAError(f"--resume {path}: no such run directory")
    _probe(lambda: _check_can_create_in(path / ".autoqra-probe", "files in run directory"), path, "run directory")


def read_priors_file(path: Path, spec: ModelSpec, granularity: str, fingerprint: str | None) -> Priors:
    """The priors of ``path``, checked against the model's groups and, when known (``fingerprint``), its
    weights; weights that are not local yet are checked at run time."""
    from autoqra.priors.schema import PriorsError

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PriorsError(f"cannot read --priors {path}: {getattr(exc, 'strerror', None) or exc}") from None
    priors = Priors.from_json(text, source=str(path))
    priors.check_matches(spec.groups(granularity), fingerprint, str(path))
    return priors


def _as_paths(request: object, *fields: str) -> None:
    """Strings given for path fields (a notebook passes "runs/x") become Paths on a frozen request."""
    for name in fields:
        value = getattr(request, name)
        if isinstance(value, str):
            object.__setattr__(request, name, Path(value))


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise AutoQRAError(f"seed must be a non-negative integer, not {seed!r}")


# -- plans --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanChoice:
    """A plan from a JSON file, or a uniform format and rank for every block linear."""

    plan_path: Path | None = None
    format_name: str | None = None
    bits: int | None = None
    group_size: int | None = None
    double_quant: bool = False
    rank: int | None = None

    def __post_init__(self) -> None:
        _as_paths(self, "plan_path")
        uniform = (self.format_name, self.bits, self.rank, self.group_size)
        if self.plan_path is not None and (any(v is not None for v in uniform) or self.double_quant):
            raise PlanError("give either --plan or --format/--bits/--rank/--group-size, not both")
        if self.rank is not None and not 0 <= self.rank <= 4096:
            raise PlanError(f"--rank must be in 0..4096, not {self.rank}")

    def resolve(self, space: SearchSpace, spec: ModelSpec) -> tuple[Plan, str]:
        """The plan and a label saying where it came from."""
        from pydantic import ValidationError

        if self.plan_path is not None:
            try:
                text = self.plan_path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise PlanError(f"cannot read plan {self.plan_path}: {getattr(exc, 'strerror', None) or exc}") from None
            plan = Plan.from_json(text, source=str(self.plan_path))
            spec.check_plan(plan)
            return plan, str(self.plan_path)
        name = self.format_name or "hqq"
        fields: dict[str, object] = {"name": name, "double_quant": self.double_quant}
        if self.bits is not None:
            fields["bits"] = self.bits
        elif name == "hqq":
            fields["bits"] = 4
        if self.group_size is not None:
            fields["group_size"] = self.group_size
        try:
            fmt = QuantFormat.model_validate(fields)
        except ValidationError as exc:
            raise PlanError(f"format: {first_error(exc)}") from None
        rank = 16 if self.rank is None else self.rank
        return uniform_plan(spec, fmt, rank, space.granularity), f"uniform {fmt.label} r={rank}"


# -- search -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchRequest:
    """A search as the user asks for it; ``autoqra.run_search(request)`` runs it.

    ``budget``: peak training memory (``16GB`` = 16 GiB, ``qlora``, ``4bits``, ``80%``, bytes).
    ``space``: preset name or YAML path; ``model`` and ``task`` override the space's. ``max_trials``
    is in high-trial units, the final selection included (default: the preset's); ``final_top``: plans
    retrained at ``final`` at the end (default: the preset's; 0 chooses by ``high``); ``time_limit``
    like ``30m``; ``out``: the run directory (default ``runs/<strategy>-<time>``).

    Where trials run: ``executor`` ``inline`` (this process, the default), ``local`` (``workers``
    spawned processes) or ``ray`` (Ray tasks, ``ray_address`` ``auto``/``HOST:PORT`` or a local
    instance); ``trials_per_gpu`` lets several local workers share a GPU. ``storage``: any SQLAlchemy
    URL Optuna accepts (default: SQLite in the run directory), ``study`` its study name.
    ``resume``: continue the run in ``out`` (or in ``storage``/``study``) instead of starting one.
    """

    budget: str
    model: str | None = None
    space: str | Path = "default"
    task: str | None = None
    strategy: str = "autoqra"
    preset: str = "quick"
    max_trials: float | None = None
    final_top: int | None = None
    time_limit: str | None = None
    seed: int = 0
    priors: Path | None = None
    device: Device = "auto"
    out: Path | None = None
    executor: str = "inline"
    workers: int = 1
    trials_per_gpu: int | None = None
    ray_address: str | None = None
    storage: str | None = None
    study: str = "autoqra"
    resume: bool = False

    def __post_init__(self) -> None:
        from autoqra.executors.base import EXECUTORS
        from autoqra.search.settings import STRATEGIES, parse_duration, preset

        _as_paths(self, "priors", "out")
        if self.executor not in EXECUTORS:
            raise AutoQRAError(f"--executor must be one of {', '.join(EXECUTORS)}, not {self.executor!r}")
        if self.workers < 1:
            raise AutoQRAError(f"--workers {self.workers}: at least one worker is needed")
        if self.executor == "inline" and self.workers > 1:
            raise AutoQRAError(f"--workers {self.workers} needs --executor local or ray (inline runs one trial at a time)")
        if self.trials_per_gpu is not None and self.trials_per_gpu < 1:
            raise AutoQRAError(f"--trials-per-gpu {self.trials_per_gpu}: at least one trial per GPU")
        if self.ray_address is not None and self.executor != "ray":
            raise AutoQRAError("--ray-address needs --executor ray")
        if not self.study.strip():
            raise AutoQRAError("--study must name a study")
        if self.resume and self.out is None and self.storage is None:
            raise AutoQRAError("resume needs the run directory (--resume RUN) or --storage URL")
        parse_budget(self.budget)
        if self.strategy not in STRATEGIES:
            raise AutoQRAError(f"unknown strategy {self.strategy!r} (strategies: {', '.join(STRATEGIES)})")
        chosen = preset(self.preset)
        if self.max_trials is not None:
            chosen.with_max_cost(self.max_trials)
        if self.final_top is not None:
            chosen.with_final_top(self.final_top)
        if self.time_limit is not None:
            parse_duration(self.time_limit)
        _check_seed(self.seed)
        check_device(self.device)


# -- trial --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialRequest:
    """One real trial of a plan at a fidelity of the space; ``autoqra.service.trial.run_trial`` runs it."""

    plan: PlanChoice = PlanChoice()
    model: str | None = None
    space: str | Path = "default"
    task: str | None = None
    fidelity: str = "micro"
    init: Literal["default", "loftq"] = "default"
    seed: int = 0
    device: Device = "auto"
    grad_checkpointing: bool = False
    out: Path | None = None

    def __post_init__(self) -> None:
        _as_paths(self, "out")
        _check_seed(self.seed)
        if self.init not in ("default", "loftq"):
            raise AutoQRAError(f"--init must be default or loftq, not {self.init!r}")
        check_device(self.device)


# -- train --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainRequest:
    """The fine-tune of a plan at a fidelity of the space (default ``final``, or ``steps`` of it), saved as
    a PEFT adapter in ``out``; ``autoqra.service.train.run_train`` runs it."""

    plan: PlanChoice = PlanChoice()
    out: Path = Path("adapter")
    model: str | None = None
    space: str | Path = "default"
    task: str | None = None
    fidelity: str = "final"
    steps: int | None = None
    evals: int = 4
    seed: int = 0
    device: Device = "auto"
    merge: bool = False

    def __post_init__(self) -> None:
        _as_paths(self, "out")
        _check_seed(self.seed)
        check_device(self.device)
        if self.steps is not None and self.steps < 1:
            raise AutoQRAError(f"--steps must be >= 1, not {self.steps}")
        if self.evals < 0:
            raise AutoQRAError(f"--evals must be >= 0, not {self.evals}")


def check_empty_output_dir(path: Path, what: str) -> None:
    """``path`` is a new directory or an empty one that can be written; nothing in it is ever replaced."""
    _probe(lambda: _check_empty_output_dir(path, what), path, what)


def _check_empty_output_dir(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise AutoQRAError(f"{what} {path} exists and is not a directory")
    if path.is_dir():
        if any(path.iterdir()):
            raise AutoQRAError(f"{what} {path} exists and is not empty; choose a new directory (nothing was written)")
        _check_can_create_in(path / ".autoqra-probe", f"files in {what}")
    else:
        _check_can_create_in(path, what)


# -- priors -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PriorsRequest:
    """Measuring the priors of a space's model on a task; ``autoqra.service.priors.run_priors`` runs it."""

    model: str | None = None
    space: str | Path = "default"
    task: str | None = None
    calibration: int = 16
    seq_len: int = 128
    demand_batches: int = 4
    seed: int = 0
    out: Path = Path("priors.json")

    def __post_init__(self) -> None:
        _as_paths(self, "out")
        _check_seed(self.seed)
        if min(self.calibration, self.demand_batches) < 1 or self.seq_len < 8:
            raise AutoQRAError("--calibration and --demand-batches must be >= 1, --seq-len >= 8")
