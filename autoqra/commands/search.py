"""``autoqra search``: arguments to a :class:`~autoqra.service.requests.SearchRequest`, then the report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoqra.errors import AutoQRAError
from autoqra.service.requests import SearchRequest
from autoqra.service.search import prepare_search, run_search

#: what defines a run: taken from the run on --resume, refused when given differently
RUN_OPTIONS = ("budget", "model", "space", "task", "strategy", "preset", "max_trials", "final_top", "seed",
               "priors", "device")
DEFAULTS: dict[str, Any] = {"space": "default", "preset": "quick", "strategy": "autoqra", "seed": 0, "device": "auto"}


def request_from_args(args: argparse.Namespace) -> SearchRequest:
    given = {k: getattr(args, k) for k in RUN_OPTIONS if getattr(args, k) is not None}
    execution = {"time_limit": args.time_limit, "executor": args.executor, "workers": args.workers,
                 "trials_per_gpu": args.trials_per_gpu, "ray_address": args.ray_address}
    if args.resume is None:
        if "budget" not in given:
            raise AutoQRAError("search needs --budget (e.g. --budget 16GB or --budget qlora), or --resume RUN")
        return SearchRequest(**{**DEFAULTS, **given}, **execution, storage=args.storage, out=args.out,
                             study=args.study or "autoqra")
    return _resume_request(args, given, execution)


def _resume_request(args: argparse.Namespace, given: dict[str, Any], execution: dict[str, Any]) -> SearchRequest:
    from autoqra.service import run_store

    is_url = "://" in args.resume
    storage = args.resume if is_url else args.storage
    out = args.out if is_url else Path(args.resume)
    url = run_store.normalize_url(storage) if storage else None
    if url is not None:
        run_store.check_reachable(url)
    settings = run_store.stored_settings(out, url, args.study or "autoqra")
    stored = settings["request"]
    study = args.study or settings.get("study") or "autoqra"
    for key, value in given.items():
        before = stored.get(key)
        if str(value) != str(before):
            raise AutoQRAError(f"--resume {args.resume}: the run was made with --{key.replace('_', '-')} "
                               f"{before if before is not None else '(unset)'}, not {value}; leave it out to resume")
    request = {k: stored.get(k) for k in RUN_OPTIONS}
    return SearchRequest(**{**DEFAULTS, **{k: v for k, v in request.items() if v is not None}}, **execution,
                         storage=storage, out=out, resume=True, study=study)


def run_search_command(args: argparse.Namespace) -> int:
    from autoqra.service.run_store import shown

    prepared = prepare_search(request_from_args(args))  # every bad input fails here, before any output
    outcome = run_search(prepared)
    for line in outcome.report_lines():
        print(line)
    print(f"wrote {outcome.run_dir}/: {', '.join(outcome.files)} (Optuna study '{outcome.study}' at "
          f"{shown(outcome.storage_url)})")
    return 0 if outcome.chosen_plan is not None else 1
