"""A wheel that works: built from the source tree, installed into a fresh virtualenv outside it, its
console script runs with the presets it ships (package data found through importlib.resources).

The fresh environment takes its dependencies from the test environment through a ``.pth`` line (no
download, seconds instead of minutes); ``pip check`` then proves the wheel's declared requirements
are met by the pinned set. autoqra itself comes only from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, text=True, cwd=base)
    wheels = list(dist.glob("autoqra-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # dependencies from the test environment, after the fresh site-packages on sys.path
    (Path(site) / "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheels[0])],
                   check=True, capture_output=True, text=True)
    work = base / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return env_dir, work, env


def run(installed, *args: str) -> subprocess.CompletedProcess:
    env_dir, work, env = installed
    return subprocess.run([str(env_dir / "bin" / args[0]), *args[1:]], capture_output=True, text=True, cwd=work,
                          env=env, timeout=600)


def test_autoqra_comes_from_the_wheel_and_its_requirements_are_met(installed):
    env_dir, _, _ = installed
    proc = run(installed, "python", "-c", "import autoqra, autoqra.search_spaces as s; print(autoqra.__file__); "
               "print(s.__file__)")
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.split():
        assert Path(line).is_relative_to(env_dir) and not Path(line).is_relative_to(ROOT), line
    check = run(installed, "python", "-m", "pip", "check")
    assert "autoqra" not in check.stdout, check.stdout  # no unmet requirement of autoqra


def test_estimate_runs_with_the_shipped_default_space(installed):
    proc = run(installed, "autoqra", "estimate", "--space", "default", "--budget", "qlora")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "space       default; granularity block" in proc.stdout and "total peak" in proc.stdout
    # uniform HQQ-4 r16 against the QLoRA budget: 1.1% over on the shipped default space (memory model v2)
    assert "plan does NOT fit: uses 101.1% of the budget" in proc.stdout


def test_trial_help_runs(installed):
    proc = run(installed, "autoqra", "trial", "--help")
    assert proc.returncode == 0 and "--fidelity" in proc.stdout, proc.stderr
