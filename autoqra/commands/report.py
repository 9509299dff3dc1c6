"""``autoqra report RUN``: the end-of-search report of any run (finished or running), its trials as
CSV or JSON, and its plots, all read from the run's ledger."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from autoqra.service.requests import check_output_file, write_output


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> null, numpy scalars -> Python."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_report_command(args: argparse.Namespace) -> int:
    from autoqra.report.run import load_run

    if args.csv is not None:
        check_output_file(args.csv, "--csv file")  # before the run is read: a bad path fails first
    run = load_run(args.run, study=args.study)
    if args.csv is not None:
        write_output(args.csv, run.trials.to_csv(index=False))
    if args.json:
        chosen = run.chosen
        records = [{k: _clean(v) for k, v in row.items()} for row in run.trials.to_dict(orient="records")]
        print(json.dumps({
            "run": run.source, "finished": run.finished, "budget_bytes": run.budget_bytes,
            "stopped_by": run.outcome.stopped_by, "cost_spent_high_units": run.outcome.spent,
            "chosen": None if chosen is None else {"by": chosen.by, "trial": int(chosen.row["number"]),
                                                   "plan_hash": chosen.plan.plan_hash, "plan": chosen.plan.to_dict()},
            "front": [int(n) for n in run.front["number"]], "trials": records,
        }, indent=2))
    else:
        for line in run.report_lines():
            print(line)
    notes = []
    if args.plot is not None:
        from autoqra.report.plots import write_plots

        written = write_plots(run, args.plot)
        notes.append(f"wrote {', '.join(str(p) for p in written)}")
    if args.csv is not None:
        notes.append(f"wrote {args.csv} ({len(run.trials)} trials, {len(run.trials.columns)} columns)")
    for note in notes:  # with --json, stdout stays one JSON document
        print(note, file=sys.stderr if args.json else sys.stdout)
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run directory (runs/NAME) or a storage URL (with --study)")
    parser.add_argument("--study", help="study name in a storage URL (default: autoqra)")
    parser.add_argument("--csv", type=Path, help="write one row per trial to this CSV file")
    parser.add_argument("--json", action="store_true", help="print JSON (chosen plan, front, every trial) "
                        "instead of the text report")
    parser.add_argument("--plot", type=Path, help="write the plots (front, layers, progress, hypervolume) as "
                        "PNG into this folder (a search writes them into RUN/plots/ itself)")



def run_export_command(args: argparse.Namespace) -> int:
    from autoqra.report.export import export_plan
    from autoqra.report.run import load_run
    from autoqra.service.requests import check_empty_output_dir

    check_empty_output_dir(args.out, "--out")
    run = load_run(args.run, study=args.study)
    plan, files = export_plan(run, args.pick, args.out)
    print(f"exported plan {plan.plan_hash[:8]} of {run.source} to {args.out}/: {', '.join(files)}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run directory (runs/NAME) or a storage URL (with --study)")
    parser.add_argument("--study", help="study name in a storage URL (default: autoqra)")
    parser.add_argument("--pick", default="chosen", help="chosen (default), a trial number, or a plan-hash prefix")
    parser.add_argument("--out", type=Path, required=True, help="new (or empty) directory for the export")
