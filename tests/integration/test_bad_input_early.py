"""Bad input that used to be refused late (after a settings header, a model load or minutes of
measurement) is now refused first: exit 2, exactly one line on stderr, nothing on stdout, nothing
created or written (no model conversion, priors or quantized layers in the cache: no model load,
measurement or training happened)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def make_workdir(path: Path) -> Path:
    (path / "a-file").write_text("not a folder\n")
    (path / "empty.jsonl").write_text("\n")
    (path / "garbage-priors.json").write_text("{not json")
    return path


CASES = {
    "search, --out below a file": (
        ["search", "--budget", "qlora", "--out", "a-file/run"], "cannot create run directory"),
    "search, unreadable --priors": (
        ["search", "--budget", "qlora", "--priors", "no-such-priors.json", "--out", "run"], "cannot read --priors"),
    "search, --priors not JSON": (
        ["search", "--budget", "qlora", "--priors", "garbage-priors.json", "--out", "run"], "not valid JSON"),
    "search, empty --task file": (
        ["search", "--budget", "qlora", "--task", "empty.jsonl", "--out", "run"], "needs at least 2"),
    "trial, empty --task file": (
        ["trial", "--task", "empty.jsonl"], "needs at least 2"),
    "trial, --out below a file": (
        ["trial", "--out", "a-file/result.json"], "cannot create --out"),
    "priors, --out below a file": (
        ["priors", "--out", "a-file/priors.json"], "cannot create --out"),
    "estimate, empty --budget": (
        ["estimate", "--budget", ""], "budget is empty"),
    "estimate, --save-plan below a file": (
        ["estimate", "--save-plan", "a-file/plan.json"], "cannot create --save-plan"),
}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if not _cuda_available():  # on a machine with a GPU, --device cuda is valid input
    CASES["trial, --device cuda without a GPU"] = (["trial", "--device", "cuda"], "no CUDA device")
    CASES["search, --device cuda without a GPU"] = (
        ["search", "--budget", "qlora", "--device", "cuda", "--out", "run"], "no CUDA device")


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """Every case run once, each in a folder of its own, a few at a time: case -> ((process, the folder's
    files before, and after), folder)."""
    from tests.cli_kit import in_own_folders

    def refuse(case: str, workdir: Path):
        cache = workdir / "cache"  # must stay absent: no model conversion, no priors, no quantized layers
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "AUTOQRA_CACHE": str(cache)}
        before = tree(workdir)
        proc = subprocess.run([sys.executable, "-m", "autoqra", *CASES[case][0]], capture_output=True, text=True,
                              cwd=workdir, env=env, timeout=120)
        return proc, before, tree(workdir)

    return in_own_folders(sorted(CASES), lambda: make_workdir(tmp_path_factory.mktemp("case")), refuse)


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_first_in_one_line(refusals, case):
    _, needle = CASES[case]
    (proc, before, after), _ = refusals[case]
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoqra: error: ") and needle in lines[0], lines
    assert proc.stdout == ""
    # nothing created or written, the cache included: refused before any model load, measurement or
    # training (a timed assertion here failed on a busy machine; the empty cache is the real proof)
    assert after == before
