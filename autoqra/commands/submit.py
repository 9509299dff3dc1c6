"""``autoqra submit --address http://HOST:8265 [--storage URL] -- search ...``: a search as a Ray job.

Submits ``python -m autoqra search ...`` through the Ray Jobs SDK with this folder as the job's
working directory, streams the job's logs, exits with the job's status (0 when it SUCCEEDED) and
prints where the results are. In the job, ``--executor ray`` joins the job's own cluster.
"""

from __future__ import annotations

import argparse
import re
import shlex
import time
from pathlib import Path

from autoqra.errors import AutoQRAError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", required=True, help="the Ray cluster's jobs address, http://HOST:8265")
    parser.add_argument("--storage", help="trial store URL for the search (e.g. postgresql://user@db:5432/autoqra); "
                        "default: the search's own (SQLite in its run directory on the head)")
    parser.add_argument("--working-dir", type=Path, default=Path("."),
                        help="folder uploaded as the job's working directory (default: .)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable of the job (repeatable); HF_HUB_OFFLINE=1 is always set")
    parser.add_argument("--python", default="python", help="the interpreter the job runs on the cluster (default: python)")
    parser.add_argument("--no-wait", action="store_true", help="submit and print the job id; do not stream its logs")
    parser.add_argument("search", nargs=argparse.REMAINDER, help="-- search ARGS: the search to run")


def run_submit_command(args: argparse.Namespace) -> int:
    command = list(args.search[1:] if args.search[:1] == ["--"] else args.search)
    if command[:1] != ["search"]:
        raise AutoQRAError("submit runs a search: autoqra submit --address http://HOST:8265 -- search --budget 16GB ...")
    if args.storage:
        if "--storage" in command:
            raise AutoQRAError("give --storage once: to submit or to the search, not both")
        command += ["--storage", args.storage]
    env = {"HF_HUB_OFFLINE": "1"}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AutoQRAError(f"--env {item!r}: write KEY=VALUE")
        env[key] = value
    if not args.working_dir.is_dir():
        raise AutoQRAError(f"--working-dir {args.working_dir} is not a folder")
    client = _client(args.address)
    entrypoint = shlex.join([args.python, "-m", "autoqra", *command])
    job = client.submit_job(entrypoint=entrypoint,
                            runtime_env={"working_dir": str(args.working_dir.resolve()), "env_vars": env})
    print(f"submitted job {job} to {args.address}: {entrypoint}", flush=True)
    if args.no_wait:
        print(f"follow it with: ray job logs --address {args.address} --follow {job}")
        return 0
    logs = _stream(client, job)
    status = _wait(client, job)
    wrote = re.findall(r"^wrote (\S+)/: .*$", logs, flags=re.MULTILINE)
    print(f"job {job} {status}", flush=True)
    if wrote:
        where = f"run directory {wrote[-1]} on the cluster node that ran the job"
        print(f"results: {where}" + (f"; trials in {args.storage}" if args.storage else ""))
    return 0 if status == "SUCCEEDED" else 1


def _client(address: str):  # type: ignore[no-untyped-def]
    from autoqra.executors.ray_tasks import import_ray

    import_ray()
    from ray.job_submission import JobSubmissionClient

    if not re.match(r"^https?://[^/:]+(:\d+)?/?$", address):
        raise AutoQRAError(f"--address {address!r}: give the jobs address as http://HOST:8265")
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise AutoQRAError(f"cannot reach the Ray jobs API at {address}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _stream(client, job: str) -> str:  # type: ignore[no-untyped-def]
    """Print the job's logs as they come; return them all."""
    import asyncio

    chunks: list[str] = []

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job):
            print(chunk, end="", flush=True)
            chunks.append(chunk)

    asyncio.run(tail())
    return "".join(chunks)


def _wait(client, job: str) -> str:  # type: ignore[no-untyped-def]
    while True:
        status = str(client.get_job_status(job).value)  # a JobStatus enum
        if status in TERMINAL:
            return status
        time.sleep(1)
