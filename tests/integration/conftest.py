"""Integration fixtures: the embedded default model (converted once into a per-session cache)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A fresh autoqra cache for the test session (model conversion + quantized layers)."""
    import os

    path = tmp_path_factory.mktemp("autoqra-cache")
    old = os.environ.get("AUTOQRA_CACHE")
    os.environ["AUTOQRA_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("AUTOQRA_CACHE", None)
    else:
        os.environ["AUTOQRA_CACHE"] = old


@pytest.fixture(scope="session")
def embedded_evaluator(cache_dir):
    from autoqra.trials.evaluator import Evaluator, EvaluatorConfig

    return Evaluator(EvaluatorConfig(model="smollm2-135m", task="news", cache_dir=cache_dir))


@pytest.fixture(scope="session")
def default_space():
    from autoqra.space.search_space import load_space

    return load_space("default")


@pytest.fixture(scope="session")
def env(cache_dir):
    """The environment of a CLI subprocess: offline, the session's cache."""
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "AUTOQRA_CACHE": str(cache_dir)}


@pytest.fixture(scope="session")
def small_space(tmp_path_factory):
    """The default space with fidelities small enough for a test (a few seconds a trial)."""
    import yaml

    from tests.cli_kit import ROOT

    data = yaml.safe_load((ROOT / "search_spaces" / "default.yaml").read_text())
    data["name"] = "default-test"
    # costs relative to high (steps x batch x seq) are those of the tests' budgets: low 0.5, final 1.5
    data["fidelities"]["low"] = {"steps": 1, "batch_size": 2, "seq_len": 32, "eval_examples": 4}
    data["fidelities"]["high"] = {"steps": 2, "batch_size": 2, "seq_len": 32, "eval_examples": 4}
    data["fidelities"]["final"] = {"steps": 3, "batch_size": 2, "seq_len": 32, "eval_examples": 4}
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def autoqra_run(env, small_space, tmp_path_factory):
    """One real `autoqra search` on the embedded model at tiny fidelities: (process, run directory)."""
    from tests.cli_kit import run_cli

    out = tmp_path_factory.mktemp("run") / "r1"
    # low costs 0.5 of a high trial, final 1.5: 12 units = 9 for the search (the warm start's lows, 3
    # promotions, trust-region highs) + the final selection, 2 x 1.5
    proc = run_cli(env, "search", "--budget", "qlora", "--space", small_space, "--max-trials", "12", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


# -- services: a real PostgreSQL server and a real Ray head ----------------------------------------
PG_URL = "postgresql://autoqra_test:autoqra_test@127.0.0.1:5432/autoqra_test"  # what .ci/postgres.sh creates


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh database on the PostgreSQL server of .ci/postgres.sh (or AUTOQRA_TEST_PG_URL), dropped at
    the end; a test that needs it fails when the server is down, with the command that starts it."""
    import os
    import uuid

    import sqlalchemy
    from sqlalchemy.engine import make_url

    from autoqra.service.run_store import check_reachable, normalize_url
    from autoqra.store.ledger import StoreError

    server = normalize_url(os.environ.get("AUTOQRA_TEST_PG_URL", PG_URL))
    try:
        check_reachable(server)
    except StoreError as exc:
        pytest.fail(f"PostgreSQL is not running for the tests ({exc}); start it with `bash .ci/postgres.sh`")
    name = f"autoqra_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_cluster(env, tmp_path_factory):
    """A real local Ray head (127.0.0.1 only, 2 CPUs, jobs API on a dashboard port), stopped at the end.
    Its processes see the test session's environment (the cache, offline, this venv's python first)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    # Ray reads these when it is first imported (in this process too: the tests import it after this
    # fixture ran); without them the driver resolves 127.0.0.1 to a non-loopback address and hangs
    for key, value in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_AUTH_MODE", "disabled"),
                       ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(key, value)
    port, dashboard = _free_port(), _free_port()
    bindir = str(Path(sys.executable).parent)
    ray_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
               "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}"}
    temp = tmp_path_factory.mktemp("ray")
    start = subprocess.run(
        [str(Path(bindir) / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        env=ray_env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": ray_env}
    import ray

    if ray.is_initialized():
        ray.shutdown()
    subprocess.run([str(Path(bindir) / "ray"), "stop", "--force"], env=ray_env, capture_output=True, timeout=120)
