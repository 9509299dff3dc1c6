"""`autoqra search` with a worker pool, on Ray, on PostgreSQL, killed and resumed: real micro trials
of the embedded model at the tiny fidelities of ``small_space``, a real Ray head and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.cli_kit import ROOT, one_error_line, run_cli

#: the uninterrupted run of the ``autoqra_run`` fixture, repeated by the resume test
SEARCH = ("--budget", "qlora", "--max-trials", "12")
#: a short search (two uniform plans at high) for the pool, job and storage tests
SHORT = ("--budget", "qlora", "--strategy", "uniform", "--max-trials", "2", "--final-top", "0")


def _entries(url: str, study: str = "autoqra"):
    from autoqra.store.ledger import open_study, study_entries

    return study_entries(open_study(url, study), url)


def _keys(entries) -> Counter:
    return Counter((e.result.plan.plan_hash, e.fidelity, e.result.seed) for e in entries)


def _db(run: Path) -> str:
    return f"sqlite:///{run / 'trials.db'}"


def _states(url: str, study: str = "autoqra") -> Counter:
    from autoqra.store.ledger import open_study

    return Counter(t.state.name for t in open_study(url, study).get_trials())


def test_local_pool_of_two_runs_real_trials_like_inline(env, small_space, autoqra_run, tmp_path):
    _, reference = autoqra_run
    out = tmp_path / "pool"
    proc = run_cli(env, "search", *SEARCH[:2], "--space", small_space, "--max-trials", "4", "--final-top", "0",
                   "--executor", "local", "--workers", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "executor  local: 2 spawned worker process(es), 1 CPU thread(s) each" in proc.stderr
    entries = _entries(_db(out))
    assert max(_keys(entries).values()) == 1 and _states(_db(out)).get("RUNNING", 0) == 0
    assert len(entries) == len((out / "trials.jsonl").read_text().splitlines())
    ours = {k: e.result for k, e in zip(_keys(entries), entries, strict=True)}
    theirs = {(e.result.plan.plan_hash, e.fidelity, e.result.seed): e.result for e in _entries(_db(reference))}
    common = set(ours) & set(theirs)
    assert len(common) >= 4  # the warm start's low trials at least
    for key in common:  # the same trial; 1 torch thread per worker instead of 2 changes only float rounding
        assert ours[key].metrics.eval_loss == pytest.approx(theirs[key].metrics.eval_loss, rel=2e-3)


def _start(env, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autoqra", "search", *extra, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, out: Path, ready, timeout: float = 900) -> None:
    """SIGKILL ``proc`` mid-trial: as soon as ``ready(lines of trials.jsonl)`` and a trial is RUNNING
    in the ledger; fail if it ends first."""
    deadline = time.monotonic() + timeout
    jsonl = out / "trials.jsonl"
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in jsonl.read_text().splitlines()] if jsonl.is_file() else []
        if ready(lines) and _states(_db(out)).get("RUNNING", 0) == 1:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return
        assert proc.poll() is None, "the search ended before it could be killed"
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the search never reached the kill point")


def test_killed_twice_then_resumed_ends_like_the_uninterrupted_run(env, small_space, autoqra_run, tmp_path):
    """SIGKILL in stage 1 (NSGA-II lows), resume; SIGKILL in stage 2 (trust region), resume again:
    no finished trial runs twice, none is lost, and the chosen plan is the uninterrupted run's."""
    _, reference = autoqra_run
    out = tmp_path / "killed"
    _kill_when(_start(env, out, *SEARCH, "--space", str(small_space)), out, lambda lines: len(lines) >= 3)
    url = _db(out)
    assert _states(url)["RUNNING"] == 1  # the trial it was running when it died

    _kill_when(_start(env, out, "--resume", str(out)), out, lambda lines: any(x["stage"] == "trust-region" for x in lines))
    done_before = len(_entries(url))

    proc = run_cli(env, "search", "--resume", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resume: {done_before} finished trial(s) of run" in proc.stderr
    assert "left running by the dead process are marked failed and run again" in proc.stderr
    entries = _entries(url)
    assert _keys(entries) == _keys(_entries(_db(reference)))  # same trials, each once
    assert json.loads((out / "plan.json").read_text()) == json.loads((reference / "plan.json").read_text())
    from autoqra.store.ledger import open_study

    failed = [t for t in open_study(url).get_trials()
              if t.state.name == "FAIL" and "left running by a search process that died" in str(t.user_attrs.get("error"))]
    assert len(failed) == 2  # one per kill, marked and re-run


def test_resume_with_other_settings_is_refused_in_one_line(env, autoqra_run):
    _, reference = autoqra_run
    before = (reference / "trials.db").read_bytes()
    line = one_error_line(run_cli(env, "search", "--resume", reference, "--budget", "16GB"))
    assert "--budget qlora, not 16GB" in line
    assert (reference / "trials.db").read_bytes() == before


def test_two_searches_write_one_postgresql_study_without_loss(env, small_space, postgres_url, tmp_path):
    study = f"two-{uuid.uuid4().hex[:8]}"
    runs = [tmp_path / "a", tmp_path / "b"]
    # two searches at once on a 2-core machine: one torch thread each, or OpenMP oversubscription makes
    # every trial 3-10x slower (nothing asserted here depends on the thread count)
    one_thread = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [_start(one_thread, run, *SHORT, "--space", str(small_space), "--storage", postgres_url, "--study", study,
                    "--seed", str(seed)) for seed, run in enumerate(runs)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    from autoqra.service.run_store import normalize_url

    url = normalize_url(postgres_url)
    entries = _entries(url, study)
    numbers = [e.number for e in entries]
    assert len(numbers) == len(set(numbers)) == 4  # 2 trials each: none lost, none twice
    per_run = Counter(e.run_id for e in entries)
    assert sorted(per_run.values()) == [2, 2]
    for run in runs:
        lines = [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and {x["number"] for x in lines} <= set(numbers)
    assert _states(url, study) == Counter({"COMPLETE": 4})
    # the run directories point at the study; the password is never written to settings.json
    assert "autoqra_test:***@" in json.loads((runs[0] / "settings.json").read_text())["storage"]
    assert "give the URL instead of the run directory" in one_error_line(run_cli(env, "report", runs[0]))
    report = run_cli(env, "report", postgres_url, "--study", study)
    assert report.returncode == 0 and "trials" in report.stdout, report.stderr[-2000:]
    assert "give the URL again with --storage" in one_error_line(run_cli(env, "search", "--resume", runs[0]))


def test_a_search_submitted_with_ray_job_submit_succeeds(env, small_space, ray_cluster, tmp_path):
    from autoqra.executors.ray_tasks import import_ray

    import_ray()  # with this machine's settings, before anything else imports it
    from ray.job_submission import JobSubmissionClient

    out = tmp_path / "job"
    job = f"autoqra-{uuid.uuid4().hex[:8]}"
    runtime = json.dumps({"env_vars": {"AUTOQRA_CACHE": env["AUTOQRA_CACHE"], "HF_HUB_OFFLINE": "1"}})
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_cluster["dashboard"],
         "--submission-id", job, "--working-dir", str(ROOT), "--runtime-env-json", runtime, "--",
         "python", "-m", "autoqra", "search", *SHORT, "--space", str(small_space), "--executor", "ray",
         "--workers", "2", "--out", str(out)],
        env=ray_cluster["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert str(JobSubmissionClient(ray_cluster["dashboard"]).get_job_status(job).value) == "SUCCEEDED"
    assert "executor: ray, 2 trial(s) in flight" in proc.stdout
    assert len(_entries(_db(out))) == 2


def test_autoqra_submit_streams_the_job_and_exits_with_its_status(env, small_space, ray_cluster, tmp_path):
    store = tmp_path / "store.db"
    out = tmp_path / "submitted"
    proc = run_cli(ray_cluster["env"], "submit", "--address", ray_cluster["dashboard"], "--working-dir", ROOT,
                   "--storage", f"sqlite:///{store}", "--env", f"AUTOQRA_CACHE={env['AUTOQRA_CACHE']}", "--",
                   "search", *SHORT, "--space", small_space, "--executor", "ray", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stdout and f"results: run directory {out}" in proc.stdout
    assert "[uniform] trial 2 high" in proc.stdout  # the job's log lines came through
    assert len(_entries(f"sqlite:///{store}")) == 2
    failing = run_cli(ray_cluster["env"], "submit", "--address", ray_cluster["dashboard"], "--working-dir", ROOT, "--",
                      "search", "--budget", "qlora", "--space", tmp_path / "missing.yaml", "--out", tmp_path / "x")
    assert failing.returncode == 1 and "FAILED" in failing.stdout  # the job's own failure, as the exit status


BAD_POOL_INPUT = [
    (("--workers", "0", "--executor", "local"), "--workers 0: at least one worker"),
    (("--workers", "2"), "needs --executor local or ray"),
    (("--executor", "local", "--workers", "2", "--trials-per-gpu", "2", "--device", "cpu"), "applies to CUDA"),
    (("--storage", "not a url"), "is not a database URL"),
    (("--storage", "postgresql://nobody@127.0.0.1:1/none"), "cannot reach the database postgresql+psycopg://nobody@"),
    (("--executor", "ray", "--ray-address", "127.0.0.1:1"), "cannot reach the Ray cluster at 127.0.0.1:1"),
    (("--resume", "/nonexistent/run"), "no run there"),
]


@pytest.fixture(scope="module")
def bad_pool_refusals(env, small_space, tmp_path_factory):
    """Each case run once, in a folder of its own, a few at a time: args -> (process, folder)."""
    from tests.cli_kit import in_own_folders

    def refuse(args, folder):
        budget = () if "--resume" in args else ("--budget", "qlora")
        return run_cli(env, "search", *budget, "--space", small_space, "--out", folder / "r", *args, timeout=120)

    return in_own_folders([args for args, _ in BAD_POOL_INPUT], lambda: tmp_path_factory.mktemp("bad-pool"), refuse)


@pytest.mark.parametrize(("args", "needle"), BAD_POOL_INPUT)
def test_bad_pool_and_store_input_is_one_line(bad_pool_refusals, args, needle):
    proc, folder = bad_pool_refusals[args]
    assert needle in one_error_line(proc)
    assert not (folder / "r" / "trials.db").exists()


def test_a_study_of_another_kind_or_space_is_refused(env, small_space, autoqra_run, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(study_name="plain", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    line = one_error_line(run_cli(env, "search", *SHORT, "--space", small_space, "--storage", url, "--study", "plain",
                                  "--out", tmp_path / "r1"))
    assert "is not an autoqra study" in line
    _, reference = autoqra_run  # an autoqra study at another budget
    line = one_error_line(run_cli(env, "search", "--budget", "16GB", "--space", small_space, "--storage",
                                  _db(reference), "--out", tmp_path / "r2"))
    assert "holds a run that differs in budget_bytes" in line
    assert len(optuna.load_study(study_name="plain", storage=url).trials) == 1
