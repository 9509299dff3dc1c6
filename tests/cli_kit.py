"""Running ``python -m autoqra`` the way a user does, for the CLI tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K")

ROOT = Path(__file__).resolve().parents[1]


def run_cli(env: dict[str, str], command: str, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoqra", command, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``autoqra: error`` line of a refused command (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("autoqra: error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return errors[0]


def in_parallel(fn: Callable[[T], R], items: Iterable[T], at_once: int = 3) -> list[R]:
    """``fn(item)`` for each item, ``at_once`` at a time, results in order. For independent CLI processes
    that refuse or only read: each spends its seconds importing torch on one core, so a few at once
    share the cores. Not for processes that train (each would take every core: see test_cli_pool)."""
    with ThreadPoolExecutor(at_once) as pool:
        return list(pool.map(fn, items))


def in_own_folders(cases: Iterable[K], make_folder: Callable[[], Path], fn: Callable[[K, Path], R],
                   at_once: int = 3) -> dict[K, tuple[R, Path]]:
    """``fn(case, folder)`` for each case in a folder of its own, ``at_once`` at a time (``in_parallel``):
    case -> (result, folder). The folders are made first, in this thread: pytest's ``tmp_path_factory``
    is not made for threads (a run that made them inside the threads once errored in fixture setup)."""
    cases = list(cases)
    folders = [make_folder() for _ in cases]
    results = in_parallel(lambda pair: fn(*pair), list(zip(cases, folders, strict=True)), at_once)
    return {case: (result, folder) for case, result, folder in zip(cases, results, folders, strict=True)}
