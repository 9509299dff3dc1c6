"""The comparison: every strategy's chosen plan retrained at `final`, beside the uniform references.

On the embedded model and the default space: references without search (16-bit LoRA r16, QLoRA
NF4-DQ r16, uniform HQQ-4 r16 with and without LoftQ-style init, uniform HQQ-3 r16) and the
strategies ``sequential``, ``random``, ``optuna-nsga2``, ``optuna-tpe`` and ``autoqra``, each given
the same trial budget (the preset's, in high-trial units), each chosen plan retrained at `final`
with fixed trial seeds. Grids:

- ``main``: task ``news`` at the ``qlora`` budget, 3 search seeds, 2 `final` seeds;
- ``secondary``, 2 `final` seeds: the ``codebook`` task at ``qlora`` at 1 search seed (where adapter
  capacity matters; it replaced ``extract``, whose `final` results turned on whether one 12-entry table
  was learned at all: ``experiments/extract_noise.py``), and ``news`` at 85% of the ``qlora`` budget at
  3 search seeds (seed 0 of every method first).

Resumable: each cell (method, task, budget, seed) is a JSON file under ``--out`` written when it
finishes, and each `final` retrain of a plan is a cell of its own (shared by the methods that chose
that plan); a rerun skips finished cells, a search whose run directory holds a finished run
(``summary.json``) is read back instead of run again, and an interrupted search (killed at a
session's end, say) resumes from its ledger: its finished trials are replayed, not retrained, and
the wall time of the interrupted sessions, from each one's start to the last trial it recorded, is
carried into the cell's ``search_wall_s`` (``carried_s``). ``--report`` writes ``docs/results.md`` and
the best-so-far plot from the cells only. Every figure is a real training run on this machine.

Pausing: ``pkill -TSTP -f compare.py`` stops the grid (to run something else on the same cores
without the two slowing each other) and ``pkill -CONT -f compare.py`` resumes it; the time it spent
stopped is measured and left out of the search wall time (and recorded as ``paused_s``).

    .venv/bin/python experiments/compare.py                  # the main grid, then the report
    .venv/bin/python experiments/compare.py --grid all       # main and secondary grids
    .venv/bin/python experiments/compare.py --report         # only the report, from the cells
    .venv/bin/python experiments/compare.py --smoke --out D  # a tiny model, a minute (the test runs it)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from autoqra.domain import TRIAL_SEEDS  # noqa: E402 (light: no torch)
from autoqra.errors import AutoQRAError  # noqa: E402 (light: no torch)
from autoqra.space.memory import MEMORY_MODEL_VERSION  # noqa: E402 (light: no torch)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("sequential", "autoqra", "random", "optuna-tpe", "optuna-nsga2")
# hqq8-r16 and hqq8-r4 are over the qlora budget: ceilings that tell how much of the QLoRA -> 16-bit gap
# is the bits (8-bit HQQ against bf16) and how much the rank, i.e. what a plan within the budget could reach
REFERENCES = ("lora16-r16", "qlora-nf4dq-r16", "hqq4-r16", "hqq4-r16-loftq", "hqq3-r16", "hqq8-r16", "hqq8-r4")
FINAL_SEEDS = (1, 2)  # trial seeds of the `final` retrains, the same for every plan
TIGHT = 0.85  # the secondary grid's tighter budget, a fraction of the qlora budget
TASK_NOTES = {"extract": "Why: a run's `final` result here is whether it learned the 12-entry stock-code table "
                         "(seed-dependent, not plan-dependent) plus a weekday field no run learns; the evaluation "
                         "set is not the cause (`docs/extract-noise.md`). This grid is no longer run; the second "
                         "task is `codebook`."}


@dataclass(frozen=True)
class Grid:
    task: str
    budget: str  # "qlora" or "85%qlora"
    seeds: tuple[int, ...]


def grids(name: str) -> list[Grid]:
    main = [Grid("news", "qlora", (0, 1, 2))]
    # the tighter budget has 3 search seeds like the main grid (seed 0 first, so 1 seed is already a cell
    # of the table); codebook keeps 1
    secondary = [Grid("codebook", "qlora", (0,)), Grid("news", f"{round(100 * TIGHT)}%qlora", (0, 1, 2))]
    return {"main": main, "secondary": secondary, "all": main + secondary}[name]


def select_grids(chosen: list[Grid], tasks: list[str] | None, seeds: list[int] | None) -> tuple[Grid, ...]:
    """The grids of ``tasks`` (all when None), each at the search seeds of ``seeds`` it has (all when None)."""
    out = []
    for grid in chosen:
        kept = tuple(s for s in grid.seeds if seeds is None or s in seeds)
        if (not tasks or grid.task in tasks) and kept:
            out.append(Grid(grid.task, grid.budget, kept))
    return tuple(out)


@dataclass(frozen=True)
class Setup:
    """Where the cells go and what they run on: the default space, or the smoke test's tiny model."""

    space: str
    out: Path
    runs: Path
    max_trials: float | None  # None: the preset's
    methods: tuple[str, ...]
    references: tuple[str, ...]
    final_seeds: tuple[int, ...]
    grids: tuple[Grid, ...]
    device: str


# -- cells -----------------------------------------------------------------------------------------
class PauseClock:
    """Seconds this process spent stopped by SIGTSTP, so a paused search's wall time stays honest.

    SIGSTOP cannot be caught, so the grid is paused with SIGTSTP: the handler notes the time, stops
    the process itself and, once SIGCONT resumes it, adds the span."""

    def __init__(self) -> None:
        self.paused_s = 0.0
        self.on_resume: Any = None  # called after each pause, e.g. to record it in a SearchSessions file

    def install(self) -> None:
        signal.signal(signal.SIGTSTP, self._stop)

    def _stop(self, signum: int, frame: Any) -> None:
        began = time.perf_counter()
        os.kill(os.getpid(), signal.SIGSTOP)
        self.paused_s += time.perf_counter() - began
        log(f"  resumed after {time.perf_counter() - began:.0f} s paused")
        if self.on_resume is not None:
            self.on_resume()


class SearchSessions:
    """The processes (sessions) a search cell's search ran in, kept beside its run directory, so that a
    search killed midway resumes with an honest wall time: an interrupted session counts from its
    start to the last trial it recorded (the one it was killed in is retrained on resume, so its time
    is not carried), less the time it was paused."""

    def __init__(self, path: Path, trials_file: Path) -> None:
        self.path = path
        self.trials_file = trials_file

    def _read(self) -> list[dict[str, float]]:
        return json.loads(self.path.read_text()) if self.path.is_file() else []

    def _write(self, sessions: list[dict[str, float]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(sessions))

    def carried_s(self) -> float:
        """Close the sessions that ended without finishing (at the last trial they recorded) and return
        the seconds they spent searching."""
        sessions = self._read()
        last_trial = self.trials_file.stat().st_mtime if self.trials_file.is_file() else 0.0
        for entry in sessions:
            if "ended" not in entry:
                entry["ended"] = max(entry["started"], last_trial)
        self._write(sessions)
        return sum(max(0.0, e["ended"] - e["started"] - e["paused_s"]) for e in sessions)

    def start(self) -> None:
        self._write([*self._read(), {"started": time.time(), "paused_s": 0.0}])

    def paused(self, seconds: float) -> None:
        sessions = self._read()
        sessions[-1]["paused_s"] = seconds
        self._write(sessions)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


PAUSES = PauseClock()


def cell_name(*parts: object) -> str:
    return ".".join(str(p).replace("%", "pct").replace("/", "_") for p in parts)


def write_cell(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def read_cells(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def final_key(setup: Setup) -> str:
    from autoqra.space.search_space import load_space

    f = load_space(setup.space).fidelities["final"]
    return f"final-{f.steps}x{f.batch_size}x{f.seq_len}e{f.eval_examples}a{f.grad_accum}"


def space_key(space: dict[str, Any]) -> str:
    """A short hash of what a search depends on in the space (its description aside): formats, ranks,
    fidelities, training. A search cell made on another space is another experiment."""
    import hashlib

    body = {k: v for k, v in space.items() if k != "description"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def setup_space_key(setup: Setup) -> str:
    from autoqra.space.search_space import load_space

    return space_key(load_space(setup.space).model_dump(mode="json"))


def prior_key(setup: Setup) -> str:
    """A short hash of the prior utility's model on this space (the error of each format, the weight of
    rank): it shapes the warm start, the sequential plans and the repair, so a search cell made with
    another is another experiment even on the same space."""
    import hashlib

    from autoqra.search.codec import SearchCodec
    from autoqra.search.utility import ADAPTER_WEIGHT, format_error
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import load_space

    space = load_space(setup.space)
    body = {"format_error": [round(e, 9) for e in format_error(SearchCodec(model_spec(space.model), space))],
            "adapter_weight": ADAPTER_WEIGHT}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def check_cell(path: Path, setup: Setup, *, method: bool = False) -> bool:
    """Whether a finished cell exists; one made with another trial budget or `final` is refused, not
    reused, and so is a search cell made on another space, with another prior model or with trial seeds
    derived otherwise (a cell from before any of these was recorded too)."""
    if not path.is_file():
        return False
    cell = json.loads(path.read_text())
    mine = {"max_trials": setup.max_trials, "final_fidelity": final_key(setup)}
    theirs = {k: cell.get(k, mine[k]) for k in mine}
    # a cell from before trials recorded their dtype computed in the space's
    mine["trial_dtype"], theirs["trial_dtype"] = trial_dtype(setup), cell.get("trial_dtype", space_dtype(setup))
    # a cell from before the memory model had versions was priced by version 1: its budget and the plans
    # that fit it are another experiment's
    mine["memory_model"], theirs["memory_model"] = MEMORY_MODEL_VERSION, cell.get("memory_model", 1)
    if method:
        mine["space"], theirs["space"] = setup_space_key(setup), cell.get("space")
        mine["prior_model"], theirs["prior_model"] = prior_key(setup), cell.get("prior_model")
        mine["trial_seeds"], theirs["trial_seeds"] = TRIAL_SEEDS, cell.get("trial_seeds", "per-plan")
    if theirs != mine:
        hint = " (this machine has no fast kernels for the space's dtype)" \
            if theirs["trial_dtype"] != mine["trial_dtype"] else ""
        if theirs["memory_model"] != mine["memory_model"]:
            hint += " (the memory model changed: docs/memory-model.md)"
        raise AutoQRAError(f"{path} was made with {theirs}, this run asks for {mine}{hint}: move the old cells away "
                           "(they are another experiment) or use another --out")
    return True


def budget_bytes(setup: Setup, budget: str) -> int:
    from autoqra.search.codec import SearchCodec
    from autoqra.space.budget import parse_budget, resolve
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import load_space

    space = load_space(setup.space)
    codec = SearchCodec(model_spec(space.model), space)
    qlora = resolve(parse_budget("qlora"), codec.memory).bytes
    return qlora if budget == "qlora" else int(qlora * float(budget.split("%")[0]) / 100)


def reference_plan(setup: Setup, name: str) -> tuple[Any, str]:
    """(plan, init) of a reference."""
    from autoqra.domain import QuantFormat
    from autoqra.space.model_spec import model_spec
    from autoqra.space.reference import lora16_plan, qlora_plan
    from autoqra.space.search_space import load_space, uniform_plan

    space = load_space(setup.space)
    spec = model_spec(space.model)
    if name == "lora16-r16":
        return lora16_plan(spec, space.training.compute_dtype, space.granularity), "default"
    if name == "qlora-nf4dq-r16":
        return qlora_plan(spec, space.granularity), "default"
    bits, rank = (int(x) for x in re.fullmatch(r"hqq(\d+)-r(\d+)(?:-loftq)?", name).groups())  # type: ignore[union-attr]
    plan = uniform_plan(spec, QuantFormat(name="hqq", bits=bits, group_size=64), rank, space.granularity)
    return plan, "loftq" if name.endswith("loftq") else "default"


class Finals:
    """`final` retrains, one cell per (task, plan, init, seed), shared by every method that chose the plan."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.folder = setup.out / "finals"
        self._evaluators: dict[tuple[str, str], Any] = {}

    def path(self, task: str, plan_hash: str, init: str, seed: int) -> Path:
        """The `final` fidelity's whole definition is in the name: a re-tuned `final` gets new cells; so is
        the dtype trials compute in where it is not the space's (fp32 on a CPU without fast bf16)."""
        dtype = trial_dtype(self.setup)
        tag = () if dtype == space_dtype(self.setup) else (dtype,)
        return self.folder / f"{cell_name(task, plan_hash[:12], init, final_key(self.setup), *tag, f's{seed}')}.json"

    def get(self, task: str, plan: Any, init: str = "default", seeds: tuple[int, ...] | None = None) -> list[float | None]:
        """The plan's `final` objectives at ``seeds`` (default: the setup's), retraining what is missing."""
        values = []
        for seed in self.setup.final_seeds if seeds is None else seeds:
            path = self.path(task, plan.plan_hash, init, seed)
            if not path.is_file():
                self._run(task, plan, init, seed, path)
            values.append(json.loads(path.read_text())["objective"])
        return values

    def _run(self, task: str, plan: Any, init: str, seed: int, path: Path) -> None:
        from autoqra.space.search_space import load_space

        space = load_space(self.setup.space)
        started = time.perf_counter()
        result = self._evaluator(task, init).evaluate(plan, space.fidelities["final"], seed)
        wall = time.perf_counter() - started
        write_cell(path, {"task": task, "plan_hash": plan.plan_hash, "init": init, "seed": seed,
                          "status": result.status.value, "objective": result.objective,
                          "eval_loss": result.metrics.eval_loss, "wall_s": wall, "plan": plan.to_dict(),
                          "fidelity": result.fidelity.model_dump(mode="json"),
                          "trial_dtype": result.execution_dtype, "commit": commit()})
        log(f"  final {task} {plan.plan_hash[:8]} init {init} seed {seed} -> {result.objective} ({wall:.0f} s)")

    def _evaluator(self, task: str, init: str) -> Any:
        from autoqra.space.search_space import load_space
        from autoqra.trials.evaluator import Evaluator, EvaluatorConfig

        if (task, init) not in self._evaluators:
            self._evaluators[(task, init)] = Evaluator(EvaluatorConfig.for_space(
                load_space(self.setup.space), task, device=self.setup.device, init=init))
        return self._evaluators[(task, init)]


def run_reference(setup: Setup, finals: Finals, name: str, grid: Grid) -> None:
    path = setup.out / "cells" / f"{cell_name('ref', name, grid.task, grid.budget)}.json"
    if check_cell(path, setup):
        return
    from autoqra.space.memory import MemoryModel
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import load_space

    log(f"reference {name} on {grid.task} ({grid.budget})")
    plan, init = reference_plan(setup, name)
    space = load_space(setup.space)
    peak = MemoryModel(model_spec(space.model), space.setup).total(plan)
    values = finals.get(grid.task, plan, init)
    write_cell(path, {"kind": "reference", "method": name, "task": grid.task, "budget": grid.budget,
                      "budget_bytes": budget_bytes(setup, grid.budget), "seed": None, "final": values,
                      "predicted_peak_bytes": peak, **plan_stats(plan), "search_cost": 0.0, "search_wall_s": 0.0,
                      "plan": plan.to_dict(), "init": init, **cell_settings(setup), "commit": commit(),
                      "machine": machine(setup)})


def run_method(setup: Setup, finals: Finals, method: str, grid: Grid, seed: int) -> None:
    path = setup.out / "cells" / f"{cell_name(method, grid.task, grid.budget, f's{seed}')}.json"
    if check_cell(path, setup, method=True):
        return
    run_dir = setup.runs / cell_name(method, grid.task, grid.budget, f"s{seed}")
    if (run_dir / "summary.json").is_file() and run_space_key(run_dir) != setup_space_key(setup):
        raise AutoQRAError(f"{run_dir} holds a finished search on another space: move it away or use another --out")
    if not (run_dir / "summary.json").is_file():
        run_until_finished(setup, method, grid, seed, run_dir)
    from autoqra.domain import Plan

    summary = json.loads((run_dir / "summary.json").read_text())
    paused_file = run_dir / "paused_s.json"
    paused = float(json.loads(paused_file.read_text())) if paused_file.is_file() else 0.0
    carried_file = run_dir / "carried_s.json"
    carried = float(json.loads(carried_file.read_text())) if carried_file.is_file() else 0.0
    common = {"kind": "method", "method": method, "task": grid.task, "budget": grid.budget,
              "budget_bytes": summary["budget_bytes"], "seed": seed, "search_cost": summary["cost_spent_high_units"],
              "search_wall_s": summary["elapsed_s"] - paused + carried, "paused_s": paused, "carried_s": carried,
              "trials": summary["trials"], "best_so_far": best_so_far(run_dir),
              **cell_settings(setup), "space": run_space_key(run_dir), "prior_model": prior_key(setup),
              "trial_seeds": TRIAL_SEEDS, "commit": commit(), "machine": machine(setup),
              # what the search's own final selection retrained (objective at high -> at final, its trial seed)
              "final_selection": [{k: e[k] for k in ("plan_hash", "brief", "high_objective", "objective")}
                                  for e in summary.get("final_selection", [])]}
    if not (run_dir / "plan.json").is_file():
        log(f"  {method} chose no plan on {grid.task} ({grid.budget}) seed {seed}")
        write_cell(path, {**common, "final": [], "plan": None})
        return
    plan = Plan.from_json((run_dir / "plan.json").read_text())
    values = finals.get(grid.task, plan)
    chosen = summary["chosen"]
    write_cell(path, {**common, "final": values, "predicted_peak_bytes": chosen["predicted_peak_bytes"],
                      **plan_stats(plan), "chosen_by": summary.get("chosen_by", "high"),
                      "chosen_objective": chosen["objective"], "chosen_plan_hash": plan.plan_hash,
                      "plan": plan.to_dict()})


def run_space_key(run_dir: Path) -> str:
    return space_key(json.loads((run_dir / "settings.json").read_text())["space"])


def cell_settings(setup: Setup) -> dict[str, Any]:
    return {"max_trials": setup.max_trials, "final_fidelity": final_key(setup), "trial_dtype": trial_dtype(setup),
            "memory_model": MEMORY_MODEL_VERSION}


def space_dtype(setup: Setup) -> str:
    from autoqra.space.search_space import load_space

    return load_space(setup.space).training.compute_dtype


def trial_dtype(setup: Setup) -> str:
    """What this machine's trials compute in: the space's dtype, or fp32 where it has no fast kernels
    for it. Cells computed in another dtype differ in rounding from these, so they are not mixed."""
    from autoqra.trials.backends import execution_dtype

    return execution_dtype(space_dtype(setup), setup.device)


def run_until_finished(setup: Setup, method: str, grid: Grid, seed: int, run_dir: Path) -> None:
    """The cell's search, resumed from its ledger where an earlier process left it unfinished; writes the
    seconds this process was paused (``paused_s.json``) and those the interrupted ones searched
    (``carried_s.json``) into the run directory."""
    sessions = SearchSessions(run_dir.parent / f"{run_dir.name}.sessions.json", run_dir / "trials.jsonl")
    if run_dir.exists() and not ((run_dir / "settings.json").is_file() and (run_dir / "trials.db").is_file()):
        log(f"  {run_dir} holds a run that never started: removed, the search starts again")  # nothing to resume
        shutil.rmtree(run_dir)
    resume = run_dir.exists()
    if not resume:
        sessions.clear()
    carried = sessions.carried_s()  # 0 for a fresh search
    paused_before = PAUSES.paused_s
    sessions.start()
    PAUSES.on_resume = lambda: sessions.paused(PAUSES.paused_s - paused_before)
    try:
        if resume:
            log(f"  {run_dir} holds an unfinished run: resumed from its ledger ({carried:.0f} s searched before)")
            try:
                search(setup, method, grid, seed, run_dir, resume=True)
            except AutoQRAError as exc:  # another run key (settings changed since): not resumable, said why
                log(f"  cannot resume it ({exc}): removed, the search starts again")
                shutil.rmtree(run_dir)
                sessions.clear()
                sessions.start()
                paused_before, carried = PAUSES.paused_s, 0.0
                search(setup, method, grid, seed, run_dir)
        else:
            search(setup, method, grid, seed, run_dir)
    finally:
        PAUSES.on_resume = None
    (run_dir / "paused_s.json").write_text(json.dumps(PAUSES.paused_s - paused_before))
    (run_dir / "carried_s.json").write_text(json.dumps(carried))
    sessions.clear()


def search(setup: Setup, method: str, grid: Grid, seed: int, run_dir: Path, resume: bool = False) -> None:
    from autoqra.service.requests import SearchRequest
    from autoqra.service.search import run_search

    budget = "qlora" if grid.budget == "qlora" else str(budget_bytes(setup, grid.budget))
    log(f"search {method} on {grid.task} at {grid.budget} ({budget}) seed {seed} -> {run_dir}")
    outcome = run_search(SearchRequest(budget=budget, space=setup.space, task=grid.task, strategy=method, seed=seed,
                                       max_trials=setup.max_trials, device=setup.device, out=run_dir,
                                       resume=resume))
    (run_dir / "report.txt").write_text("\n".join(outcome.report_lines()) + "\n")  # what `autoqra search` prints


def best_so_far(run_dir: Path) -> list[tuple[float, float]]:
    """(cumulative trial cost, best objective at high or final so far) after each trial."""
    costs = json.loads((run_dir / "settings.json").read_text())["fidelity_costs"]
    budget = json.loads((run_dir / "summary.json").read_text())["budget_bytes"]
    spent, best, out = 0.0, float("-inf"), []
    for line in (run_dir / "trials.jsonl").read_text().splitlines():
        row = json.loads(line)
        spent += costs[row["fidelity"]]
        objective = row["result"]["objective"]
        if row["fidelity"] == "high" and objective is not None and row["predicted_peak_bytes"] <= budget:
            best = max(best, objective)
        out.append((spent, best))
    return out


def plan_stats(plan: Any) -> dict[str, float]:
    n = sum(len(g.modules) for g in plan.groups)
    return {"avg_bits": sum(g.format.bits * len(g.modules) for g in plan.groups) / n,
            "avg_rank": sum(g.rank * len(g.modules) for g in plan.groups) / n}


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def machine(setup: Setup) -> str:
    """The hardware, and the dtype trials computed in (fp32 where it has no fast kernels for the
    space's 16-bit dtype: cells made in another dtype differ in rounding, so the report shows it)."""
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} (torch threads {torch_threads()}, "
            f"trials in {trial_dtype(setup)})")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- report ----------------------------------------------------------------------------------------
def report(setup: Setup, doc: Path, plot: Path, command: str) -> str:
    cells = read_cells(setup.out / "cells")
    lines = ["# Results: the chosen plans retrained at `final`", "",
             "Generated by `experiments/compare.py --report` from the cells in "
             f"`{setup.out.relative_to(ROOT) if setup.out.is_relative_to(ROOT) else setup.out}/cells/` "
             f"(command: `{command}`). Objective = -held-out loss at `final`, higher is better; mean ± std over "
             "search seeds x `final` seeds; gap closed = share of the QLoRA -> 16-bit LoRA gap. "
             "Every figure is a real training run on this machine.", "",
             "Reading the columns: `n` counts `final` results (search seeds x `final` trial seeds 1 and 2); "
             "`vs QLoRA, paired` is the mean ± std of (plan - QLoRA NF4-DQ r16) at the same `final` seed (every "
             "plan is retrained with the same seeds, so this removes the part of the spread that all plans share); trial "
             "cost is what the search spent, its final selection included; search wall is the search alone "
             "(the retrains at seeds 1 and 2 are not in it). References are single plans trained without search.", ""]
    spaces = sorted({c["space"] for c in cells if c["kind"] == "method" and c.get("space")})
    priors = sorted({c["prior_model"] for c in cells if c["kind"] == "method" and c.get("prior_model")})
    seed_schemes = sorted({c.get("trial_seeds", "per-plan") for c in cells if c["kind"] == "method"})
    if spaces:
        lines += [f"Search space: `{setup.space}`, key {', '.join(spaces)} (a hash of its formats, ranks, fidelities "
                  "and training; a search cell made on another space is refused)"
                  + (f"; prior utility model key {', '.join(priors)} (the error of each format and the weight of rank; "
                     "a cell made with another model is refused too)" if priors else "")
                  + f"; trial seeds {', '.join(seed_schemes)} (`common`: every plan of a search trains at one seed "
                  "per fidelity, so the search compares plans at the same batches)" + ".", ""]
    commits = sorted({c.get("commit", "?") for c in cells})
    # cells written before trials recorded their dtype computed in the space's (bf16 on the default)
    machines = sorted({m if "trials in" in m or not m.endswith(")") else f"{m[:-1]}, trials in bf16)"
                       for m in (c.get("machine", "?") for c in cells)})
    versions = sorted({c.get("memory_model", 1) for c in cells})
    lines += [f"Commits (HEAD when each cell was written): {', '.join(commits) or '-'}. "
              f"Machine: {'; '.join(machines) or '-'}. Budgets and predicted peaks by memory model version "
              f"{', '.join(map(str, versions))}"
              + (f" (this autoqra's is {MEMORY_MODEL_VERSION}: docs/memory-model.md)"
                 if versions != [MEMORY_MODEL_VERSION] else "") + ".", ""]
    for task, budget in sorted({(c["task"], c["budget"]) for c in cells}, key=lambda k: (k[1] != "qlora", k[0] != "news", k)):
        rows = [c for c in cells if c["task"] == task and c["budget"] == budget]
        refs = {c["method"]: c for c in cells if c["kind"] == "reference" and c["task"] == task}
        ceiling, floor = _mean(refs.get("lora16-r16")), _mean(refs.get("qlora-nf4dq-r16"))
        lines += [f"## {task} at {budget} ({rows[0]['budget_bytes'] / 2**20:.1f} MiB)", "",
                  "| method | final objective | n | vs QLoRA, paired | gap closed | avg bits | avg rank | predicted peak "
                  "| budget | trial cost (high units, final selection included) | search wall | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        methods = [m for m in (*REFERENCES, *METHODS) if any(c["method"] == m for c in rows)]
        for method in methods:
            mine = [c for c in rows if c["method"] == method and c["plan"] is not None]
            values = [v for c in mine for v in finals(c)]
            missing = [c["seed"] for c in rows if c["method"] == method and c["plan"] is None]
            if missing:
                lines.append(f"| {method} | no plan chosen (seeds {', '.join(map(str, missing))}) |" + " |" * 10)
            if not values:
                continue
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            gap = (f"{100 * (mean - floor) / (ceiling - floor):.0f}%"
                   if ceiling is not None and floor is not None and ceiling != floor else "-")
            peak = statistics.fmean(c["predicted_peak_bytes"] for c in mine)
            frac = peak / rows[0]["budget_bytes"]
            cost = statistics.fmean(c["search_cost"] for c in mine)
            wall = statistics.fmean(c["search_wall_s"] for c in mine)
            seeds = ", ".join(str(c["seed"]) for c in mine if c["seed"] is not None) or "-"
            over = " (over budget)" if frac > 1 + 1e-9 else ""
            searched = mine[0]["kind"] == "method"
            digits = 4 if abs(mean) >= 0.01 else 6
            lines.append(f"| {method} | {mean:.{digits}f} ± {std:.{digits}f} | {len(values)} | "
                         f"{paired(mine, refs.get('qlora-nf4dq-r16'), digits)} | {gap} | "
                         f"{statistics.fmean(c['avg_bits'] for c in mine):.2f} | "
                         f"{statistics.fmean(c['avg_rank'] for c in mine):.1f} | {peak / 2**20:.1f} MiB | "
                         f"{100 * frac:.1f}%{over} | {f'{cost:.1f}' if searched else '-'} | "
                         f"{f'{wall / 60:.1f} min' if searched else '-'} | {seeds} |")
        lines.append("")
        spread = [statistics.stdev(v) for v in (finals(c) for c in refs.values()) if len(v) > 1]
        if ceiling is not None and floor is not None and spread and abs(ceiling - floor) < 2 * max(spread):
            lines += [f"The QLoRA -> 16-bit LoRA gap here ({abs(ceiling - floor):.2g}) is within twice the seed spread "
                      f"of the references ({max(spread):.2g}), so its gap-closed column is noise; compare plans by "
                      "the paired column, whose spread leaves out what a `final` seed does to every plan alike.", ""]
        lines += [TASK_NOTES[task], ""] if task in TASK_NOTES else []
        lines += head_to_head(rows)
        lines += reach_random(rows)
        lines += final_selections(rows)
        lines += trade_offs(rows, {c["method"]: c for c in rows if c["kind"] == "reference"}, ceiling, floor)
    if any(c["kind"] == "method" for c in cells):
        best_so_far_plot(cells, plot)
        lines += [f"![best so far]({os.path.relpath(plot, doc.parent)})", "",
                  "Best objective at `high` within the budget against trial cost spent (high-trial units), per "
                  "method, first search seed of each grid; the final selection's `final` trials are spent at the "
                  "end of each curve and do not change it (they are on another scale)." + coinciding(cells), ""]
    text = "\n".join(lines)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return text


def head_to_head(rows: list[dict[str, Any]], method: str = "autoqra") -> list[str]:
    """Per other search method and search seed: ``method``'s chosen plan against the other's, paired at each
    `final` seed. The margin is twice the seed std (the larger of the two plans' std over their `final` seeds),
    the test the issue sets against `sequential`; a tally per method ends each line."""
    mine = {c["seed"]: c for c in rows if c["method"] == method and c["plan"] is not None}
    out = []
    for other in [m for m in METHODS if m != method]:
        parts, tally = [], {"beats": 0, "ahead": 0, "same plan": 0, "behind": 0, "loses": 0}
        for theirs in sorted((c for c in rows if c["method"] == other and c["plan"] is not None), key=lambda c: c["seed"]):
            seed = theirs["seed"]
            if seed not in mine:
                continue
            diffs = paired_diffs(mine[seed], theirs)
            if not diffs:
                continue
            diff = statistics.fmean(diffs)
            spreads = (finals(c) for c in (mine[seed], theirs))
            sigma = max((statistics.stdev(v) for v in spreads if len(v) > 1), default=0.0)
            if mine[seed].get("chosen_plan_hash") == theirs.get("chosen_plan_hash"):
                verdict = "same plan"
            elif diff > 2 * sigma and sigma > 0:
                verdict = "beats"
            elif diff < -2 * sigma and sigma > 0:
                verdict = "loses"
            else:
                verdict = "ahead" if diff > 0 else "behind"
            tally[verdict] += 1
            each = " / ".join(f"{d:+.4f}" for d in diffs)
            parts.append(f"seed {seed}: {diff:+.4f} ({each}; 2σ = {2 * sigma:.4f}) {verdict}")
        if parts:
            n = sum(tally.values())
            summary = ", ".join(f"{k} {v}" for k, v in tally.items() if v)
            out.append(f"- {method} vs {other}, paired at each `final` seed: {'; '.join(parts)} "
                       f"-> {summary} of {n} search seed{'s' if n > 1 else ''}")
    return ([f"{method}'s chosen plan against each other search's (\"beats\"/\"loses\": by more than twice the "
             "seed std; \"ahead\"/\"behind\": within it):", "", *out, ""] if out else [])


def final_selections(rows: list[dict[str, Any]]) -> list[str]:
    """Per search cell that kept it: what its final selection retrained (high -> final, at the search's own
    `final` seed) and which plan it chose."""
    out = []
    for c in sorted((c for c in rows if c["kind"] == "method" and c.get("final_selection")),
                    key=lambda c: (c["seed"], METHODS.index(c["method"]) if c["method"] in METHODS else 99)):
        tried = "; ".join(f"{e['brief']} {_value(e['high_objective'])} -> {_value(e['objective'])}"
                          + (" (chosen)" if e["plan_hash"] == c.get("chosen_plan_hash") else "")
                          for e in c["final_selection"])
        out.append(f"- {c['method']} seed {c['seed']}, final selection (high -> final at the search's own seed): {tried}")
    return out + ([""] if out else [])


def _value(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"  # no high trial: a baseline picked by its low result


def coinciding(cells: list[dict[str, Any]]) -> str:
    """A sentence naming the methods whose plotted curves are the same (one hides the other), or ''."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for c in cells:
        if c["kind"] == "method" and c["best_so_far"]:
            key = (c["task"], c["budget"], c["seed"], tuple(map(tuple, c["best_so_far"])))
            groups.setdefault(key, []).append(c["method"])
    same = [f"on `{task}` at {budget}, seed {seed}: {' and '.join(sorted(methods))}"
            for (task, budget, seed, _), methods in groups.items() if len(methods) > 1]
    return f" Curves that coincide hide each other ({'; '.join(same)})." if same else ""


def reach_random(rows: list[dict[str, Any]]) -> list[str]:
    """Per seed: the trial cost at which each method's best `high` result first reached the best `high`
    result random search had at the end of its budget (a proxy: `final` is run only at the end)."""
    randoms = {c["seed"]: c for c in rows if c["method"] == "random"}
    out = []
    for seed, c in sorted(randoms.items()):
        best = max((y for _, y in c["best_so_far"]), default=float("-inf"))
        if math.isfinite(best):
            at = next(x for x, y in c["best_so_far"] if y >= best)
            out.append(f"- random reached its own best `high` ({best:.4f}) at {at:.2f} of its {c['search_cost']:.1f} "
                       f"high-trial units (seed {seed})")
    for method in [m for m in METHODS if m != "random"]:
        reached = []
        for c in sorted((c for c in rows if c["method"] == method and c["seed"] in randoms), key=lambda c: c["seed"]):
            target = max((y for _, y in randoms[c["seed"]]["best_so_far"]), default=float("-inf"))
            total = randoms[c["seed"]]["search_cost"]
            if not math.isfinite(target):
                continue  # random found nothing at high: nothing to reach
            hit = next((x for x, y in c["best_so_far"] if y >= target), None)
            reached.append(f"seed {c['seed']}: {hit:.2f} of random's {total:.1f}" if hit is not None
                           else f"seed {c['seed']}: not reached")
        if reached:
            out.append(f"- {method} reached random's best `high` at: {'; '.join(reached)} high-trial units")
    return [*out, ""] if out else []


# Pairs of uniform references that differ in one thing: what a MiB of peak memory buys spent on bits or on rank.
TRADE_OFFS = (("hqq4-r16", "hqq8-r16", "bits 4 -> 8 at rank 16"), ("hqq8-r4", "hqq8-r16", "rank 4 -> 16 at 8 bits"),
              ("hqq8-r16", "lora16-r16", "bits 8 -> 16 at rank 16"))


def trade_offs(rows: list[dict[str, Any]], refs: dict[str, dict[str, Any]], ceiling: float | None,
               floor: float | None) -> list[str]:
    """What the uniform references say a MiB buys, and how far the best plan within the budget is from
    closing 90% of the gap: a linear extrapolation at the best measured rate (a rough bound, said so)."""
    out, rates = [], []
    for a, b, what in TRADE_OFFS:
        ma, mb = _mean(refs.get(a)), _mean(refs.get(b))
        if ma is None or mb is None:
            continue
        mib = (refs[b]["predicted_peak_bytes"] - refs[a]["predicted_peak_bytes"]) / 2**20
        rate = (mb - ma) / mib if mib > 0 else float("nan")
        rates.append((what, rate))
        out.append(f"- {what} ({a} -> {b}): {mb - ma:+.4f} for {mib:+.1f} MiB of peak, {rate:.5f} per MiB")
    if not out:
        return []
    fitting: dict[str, list[float]] = {}
    for c in rows:
        if c["plan"] is not None and c["predicted_peak_bytes"] <= c["budget_bytes"]:
            fitting.setdefault(c["method"], []).extend(finals(c))
    within = [(statistics.fmean(v), m) for m, v in fitting.items() if v]  # per method, as the table's means
    lines = ["What a MiB of peak memory buys at `final`, from uniform references that differ in one thing:", "", *out]
    paying = [(what, rate) for what, rate in rates if math.isfinite(rate) and rate > 1e-4]
    if within and ceiling is not None and floor is not None and paying:
        best, method = max(within)
        target = floor + 0.9 * (ceiling - floor)
        if best < target:
            costs = "; ".join(f"{(target - best) / rate:.0f} MiB at the rate of {what}" for what, rate in paying)
            lines.append(f"- the best `final` mean within the budget, {best:.4f} ({method}), is {target - best:.4f} short "
                         f"of 90% of the gap ({target:.4f}); bought at the rates above, that is {costs}, beyond "
                         f"the budget's {rows[0]['budget_bytes'] / 2**20:.1f} MiB (linear extrapolations)")
    return [*lines, ""]


def paired(mine: list[dict[str, Any]], qlora: dict[str, Any] | None, digits: int) -> str:
    """Mean ± std of (this plan - QLoRA) at the same `final` trial seed. Every plan is retrained with the
    same seeds (the same batch order), so a seed that is good for one plan tends to be good for all:
    the paired difference shows what the pooled spread hides."""
    if qlora is None:
        return "-"
    if any(c["method"] == qlora["method"] for c in mine):
        return "(reference)"
    diffs = [d for c in mine for d in paired_diffs(c, qlora)]
    if not diffs:
        return "-"
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return f"{statistics.fmean(diffs):+.{digits}f} ± {std:.{digits}f}"


def _mean(cell: dict[str, Any] | None) -> float | None:
    if cell is None:
        return None
    values = finals(cell)
    return sum(values) / len(values) if values else None


def finals(cell: dict[str, Any]) -> list[float]:
    """The cell's `final` results that exist (a failed retrain is None)."""
    return [v for v in cell["final"] if v is not None]


def paired_diffs(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """a - b at each `final` seed where both have a result (every plan is retrained at the same seeds)."""
    return [x - y for x, y in zip(a["final"], b["final"], strict=True) if x is not None and y is not None]


def best_so_far_plot(cells: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(c["task"], c["budget"]) for c in cells if c["kind"] == "method"},
                  key=lambda k: (k[1] != "qlora", k))
    fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 4.4), squeeze=False)
    for ax, (task, budget) in zip(axes[0], keys, strict=True):
        for method in METHODS:
            mine = sorted((c for c in cells if c["kind"] == "method" and c["method"] == method
                           and c["task"] == task and c["budget"] == budget), key=lambda c: c["seed"])
            if not mine:
                continue
            points = [(x, y) for x, y in mine[0]["best_so_far"] if y != float("-inf")]
            if points:
                ax.step([p[0] for p in points], [p[1] for p in points], where="post", label=method)
        ax.set_title(f"{task} at {budget}")
        ax.set_xlabel("trial cost spent (high-trial units)")
        ax.set_ylabel("best objective at high (-held-out loss)")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- smoke ------------------------------------------------------------------------------------------
def smoke_space(folder: Path) -> Path:
    """A 2-block Llama with random weights (tokenizer of the embedded model) and a space of a few steps."""
    import yaml

    from autoqra.trials.models import save_tiny_llama

    path = folder / "space.yaml"
    if path.is_file():
        return path
    save_tiny_llama(folder / "model")
    fid = {"batch_size": 2, "seq_len": 64, "eval_examples": 4}  # 64: an extract or codebook record is never cut
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "compare-smoke", "model": str(folder / "model"), "granularity": "block",
        "choices": {"formats": [{"name": "hqq", "bits": b, "group_size": 64} for b in (2, 3, 4, 8)]
                    + [{"name": "nf4", "bits": 4, "group_size": 64, "double_quant": True}, {"name": "bf16", "bits": 16}],
                    "ranks": [0, 4, 8, 16]},
        "training": {"batch_size": 2, "seq_len": 32, "compute_dtype": "bf16"},
        "fidelities": {"low": {"steps": 2, **fid}, "high": {"steps": 4, **fid}, "final": {"steps": 6, **fid}},
        "task": "news",
    }))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=["main", "secondary", "all"], default="main")
    parser.add_argument("--tasks", nargs="+", help="only the grids of these tasks (default: every grid's)")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these search seeds of each grid (default: "
                        "every grid's: 0 1 2 on news, 0 on codebook)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--references", nargs="+", choices=REFERENCES, default=list(REFERENCES))
    parser.add_argument("--max-trials", type=float, help="trial budget of every search (default: the quick preset's)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "compare")
    parser.add_argument("--report", action="store_true", help="only write the report from the cells")
    parser.add_argument("--doc", type=Path, help="where the report goes (default: docs/results.md; the plot beside "
                                                 "it, named <doc>-best-so-far.png)")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, 2 methods, 1 seed: for the test")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from autoqra.cli import configure_logging, quiet_libraries

    configure_logging(verbose=False, quiet=False)
    quiet_libraries("search", verbose=False)
    out = args.out.resolve()
    PAUSES.install()
    if args.smoke:
        setup = Setup(space=str(smoke_space(_mkdir(out / "smoke-model"))), out=out, runs=out / "runs",
                      max_trials=args.max_trials or 6.0, methods=("sequential", "autoqra"), references=("lora16-r16", "qlora-nf4dq-r16"),
                      final_seeds=(1,), grids=(Grid("news", "qlora", (0,)), Grid("codebook", "qlora", (0,))),
                      device="cpu")
        doc, plot = out / "results.md", out / "best-so-far.png"
    else:
        setup = Setup(space="default", out=out, runs=out / "runs", max_trials=args.max_trials,
                      methods=tuple(args.methods), references=tuple(args.references), final_seeds=FINAL_SEEDS,
                      grids=select_grids(grids(args.grid), args.tasks, args.seeds),
                      device=args.device)
        doc = (args.doc or ROOT / "docs" / "results.md").resolve()
        plot = doc.with_name(f"{doc.stem}-best-so-far.png")
    try:
        if not args.report:
            check_setup(setup)  # bad input fails now, in one line, not after hours of references
            run_grid(setup)
        command = "python experiments/compare.py" + (" --smoke" if args.smoke else "")
        if args.out.resolve() != (ROOT / "experiments" / "results" / "compare").resolve() and not args.smoke:
            command += f" --out {os.path.relpath(out, ROOT)}"
        report(setup, doc, plot, command + (f" --doc {os.path.relpath(doc, ROOT)}" if args.doc else ""))
    except AutoQRAError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    log(f"wrote {doc} and {plot}")
    return 0


def check_setup(setup: Setup) -> None:
    from autoqra.search.pipeline import fidelity_costs
    from autoqra.search.settings import preset
    from autoqra.service.requests import resolve_trial_inputs
    from autoqra.trials.models import resolve_device

    space, _, _ = resolve_trial_inputs(setup.space, None, None)
    if "final" not in space.fidelities:
        raise AutoQRAError(f"space {space.name} has no `final` fidelity to retrain the chosen plans at")
    if setup.max_trials is not None:
        preset("quick").with_trial_budget(setup.max_trials, fidelity_costs(space.fidelities))
    resolve_device(setup.device)
    for grid in setup.grids:
        resolve_trial_inputs(setup.space, None, grid.task)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_grid(setup: Setup) -> None:
    """Per grid: the two references that define the gap, every method at the first seed, the other
    references, then the other seeds; so what finishes first is already a comparison."""
    finals = Finals(setup)
    core = [r for r in setup.references if r in ("lora16-r16", "qlora-nf4dq-r16")]
    for grid in setup.grids:
        for name in core:
            run_reference(setup, finals, name, grid)
        for method in setup.methods:
            run_method(setup, finals, method, grid, grid.seeds[0])
        for name in [r for r in setup.references if r not in core]:
            run_reference(setup, finals, name, grid)
        for seed in grid.seeds[1:]:
            for method in setup.methods:
                run_method(setup, finals, method, grid, seed)


if __name__ == "__main__":
    raise SystemExit(main())
