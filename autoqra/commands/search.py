"""``autoqra search``: arguments to a :class:`~autoqra.service.requests.SearchRequest`, then the report."""

from __future__ import annotations

import argparse

from autoqra.service.requests import SearchRequest
from autoqra.service.search import prepare_search, run_search


def request_from_args(args: argparse.Namespace) -> SearchRequest:
    return SearchRequest(budget=args.budget, model=args.model, space=args.space, task=args.task,
                         strategy=args.strategy, preset=args.preset, max_trials=args.max_trials,
                         final_top=args.final_top,
                         time_limit=args.time_limit, seed=args.seed, priors=args.priors, device=args.device,
                         out=args.out)


def run_search_command(args: argparse.Namespace) -> int:
    from autoqra.store.ledger import sqlite_url

    prepared = prepare_search(request_from_args(args))  # every bad input fails here, before any output
    outcome = run_search(prepared)
    for line in outcome.report_lines():
        print(line)
    print(f"wrote {outcome.run_dir}/: {', '.join(outcome.files)} (Optuna study 'autoqra' at "
          f"{sqlite_url(outcome.run_dir)})")
    return 0 if outcome.chosen_plan is not None else 1
