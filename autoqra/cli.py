"""Command line: ``python -m autoqra <command>``.

Heavy imports (torch, transformers) happen inside the commands, so ``--help`` stays fast. Errors a
user can cause print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from autoqra.commands.common_args import add_model_arguments, add_plan_arguments
from autoqra.errors import AutoQRAError

BUDGET_HELP = (
    "peak training memory: 16GB (GB = GiB = 2^30 bytes), 16000MB, raw bytes, 4bits (average stored "
    "bits per block weight in the QLoRA setup), qlora (peak of uniform NF4 QLoRA r=16), 80%% (of the "
    "16-bit LoRA r=16 peak)"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _common() -> argparse.ArgumentParser:
    """Options every command takes: how much it says on stderr (results always go to stdout)."""
    common = argparse.ArgumentParser(add_help=False)
    talk = common.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="also debug messages and library warnings")
    talk.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="autoqra",
        description="Search per-layer quantization bits and LoRA ranks under a peak-training-memory budget.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _common()
    _add_estimate(sub, common)
    _add_trial(sub, common)
    _add_priors(sub, common)
    _add_search(sub, common)
    _add_result_commands(sub, common)
    return parser


def _add_estimate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    est = sub.add_parser(
        "estimate", parents=[common],
        help="parameter counts and peak-training-memory breakdown of a plan",
        description="Predict the peak training memory of a plan (or a uniform format and rank) from "
        "the model's config alone. Sizes are binary: GiB = 2^30 bytes.",
    )
    add_plan_arguments(est)
    est.add_argument("--batch-size", type=int, help="default: the space's training.batch_size")
    est.add_argument("--seq-len", type=int, help="default: the space's training.seq_len")
    est.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                     help="default: the space's training.grad_checkpointing")
    est.add_argument("--optimizer", choices=["adamw", "adamw8bit", "paged_adamw8bit"])
    est.add_argument("--compute-dtype", choices=["bf16", "fp16", "fp32"])
    est.add_argument("--budget", help=BUDGET_HELP)
    est.add_argument("--save-plan", type=Path, help="write the evaluated plan as JSON to this path")
    est.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def _add_trial(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    trial = sub.add_parser(
        "trial", parents=[common],
        help="train and evaluate one plan for real (quantized base + LoRA) at a fidelity",
        description="Build the model with the plan's formats (HQQ / bitsandbytes) and LoRA ranks (PEFT), "
        "train the adapters at the chosen fidelity with the space's optimizer and evaluate on the task's "
        "held-out split.",
    )
    add_plan_arguments(trial)
    trial.add_argument("--task", help="news, arith, extract, codebook or a .jsonl file (default: the space's task)")
    trial.add_argument("--fidelity", default="micro", help="fidelity name from the space (default: micro)")
    trial.add_argument("--init", choices=["default", "loftq"], default="default",
                       help="adapter init: PEFT default (B=0), or loftq (rank-r SVD of the quantization residual)")
    trial.add_argument("--seed", type=int, default=0, help="run seed; the trial seed derives from it and the "
                       "fidelity, the same for every plan, so plans compare at the same batches (default 0)")
    trial.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    trial.add_argument("--grad-checkpointing", action="store_true")
    trial.add_argument("--out", type=Path, help="also write the TrialResult JSON to this path")
    trial.add_argument("--json", action="store_true", help="print the TrialResult as JSON (stdout carries only it)")


def _add_priors(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    pri = sub.add_parser(
        "priors", parents=[common],
        help="measure per-group quantization sensitivity and adaptation demand (the search's priors)",
        description="Sensitivity: KL divergence between the unquantized model's outputs and those with only "
        "one group at the space's lowest format. Demand: mean squared LoRA gradient norm per group.",
    )
    add_model_arguments(pri)
    pri.add_argument("--task", help="news, arith, extract, codebook or a .jsonl file (default: the space's task)")
    pri.add_argument("--calibration", type=int, default=16, help="calibration sequences (default 16)")
    pri.add_argument("--seq-len", type=int, default=128, help="tokens per calibration sequence (default 128)")
    pri.add_argument("--demand-batches", type=int, default=4, help="training batches for the demand (default 4)")
    pri.add_argument("--seed", type=int, default=0)
    pri.add_argument("--out", type=Path, default=Path("priors.json"), help="output file (default priors.json)")


def _add_search(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    srch = sub.add_parser(
        "search", parents=[common],
        help="search per-layer bits and LoRA ranks under a peak-training-memory budget (real trials)",
        description="Priors, a multi-fidelity NSGA-II stage and a trust-region Bayesian stage, every candidate "
        "trained for real; writes the run directory (plan, Pareto front, every trial in an Optuna study).",
    )
    srch.add_argument("--budget", help=BUDGET_HELP + " (required, except with --resume)")
    add_model_arguments(srch)
    srch.add_argument("--task", help="news, arith, extract, codebook or a .jsonl file (default: the space's task)")
    srch.add_argument("--preset", choices=["quick", "standard", "paper"],
                      help="search effort: population, promotions, trial budget, priors (default: quick)")
    srch.add_argument("--strategy", choices=["autoqra", "random", "uniform", "sequential", "optuna-nsga2", "optuna-tpe"],
                      help="default: autoqra; the others are baselines on the same harness and trial budget")
    srch.add_argument("--max-trials", type=float, help="trial budget in high-trial units, final selection included "
                      "(a low or final trial counts as its share of a high trial's training tokens); default: the "
                      "preset's (quick: 12 + 2 final trials)")
    srch.add_argument("--final-top", type=int, help="retrain the best K plans at the space's `final` fidelity and "
                      "choose the best final result (0: choose by high); default: the preset's (quick 2, "
                      "standard 3, paper 4)")
    srch.add_argument("--time-limit", help="stop starting trials after this long, e.g. 30m, 1h, 90s (a limit "
                      "reached skips the final selection: the plan is then chosen by high)")
    srch.add_argument("--seed", type=int, help="run seed (default 0): the search and every trial seed")
    srch.add_argument("--priors", type=Path, help="priors file from `autoqra priors` (default: measured once and cached)")
    srch.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (cuda when present)")
    srch.add_argument("--out", type=Path, help="run directory (default: runs/<strategy>-<time>)")
    srch.set_defaults(space=None)
    pool = srch.add_argument_group("where trials run")
    pool.add_argument("--executor", choices=["inline", "local", "ray"], default="inline",
                      help="inline: one trial at a time in this process (default); local: a pool of --workers "
                      "processes; ray: Ray tasks on a cluster or a local Ray instance")
    pool.add_argument("--workers", type=int, default=1, help="trials in flight at once (default 1)")
    pool.add_argument("--trials-per-gpu", type=int, help="local executor on CUDA: workers sharing one GPU (default 1)")
    pool.add_argument("--ray-address", help="auto, or HOST:PORT of a running Ray cluster (default: start a local "
                      "Ray instance for the run)")
    store = srch.add_argument_group("where trials are kept")
    store.add_argument("--storage", help="SQLAlchemy URL of the trial store, e.g. postgresql://user@host:5432/db "
                       "(default: sqlite in the run directory)")
    store.add_argument("--study", help="study name in the store (default: autoqra; on --resume the run's)")
    store.add_argument("--resume", metavar="RUN", help="continue the run in directory RUN (or at storage URL RUN): "
                       "finished trials come from its ledger, the rest runs; its settings are used")


#: commands whose arguments live beside their code: name -> (module, help, description)
_RESULT_COMMANDS = {
    "report": ("report", "the report, trial table (CSV/JSON) and plots of a finished or running search",
               "Read a run from its ledger (a run directory, or a storage URL) and print the report the search "
               "prints at its end; optionally its trials as CSV or JSON and its plots as PNG."),
    "dashboard": ("dashboard", "serve a run's Optuna study with optuna-dashboard on 127.0.0.1",
                  "Open a run's trials in optuna-dashboard (pip extra `dashboard`), on loopback only."),
    "export": ("report", "write a run's plan as PEFT adapter config + per-module quantization settings",
               "Export a plan of a run (the chosen one by default): plan.json, a PEFT adapter_config.json "
               "(rank_pattern keyed by module), quantization.json and a README with the Python that builds it."),
    "train": ("train", "fine-tune a plan at the space's final schedule and save the PEFT adapter",
              "Train a plan (e.g. a search's plan.json) on the trial engine at a fidelity of the space (default "
              "final), with a progress bar and held-out evaluations, and save the LoRA adapter (PEFT) that loads "
              "onto autoqra.load_quantized(model, plan)."),
    "submit": ("submit", "submit a search to a Ray cluster as a Ray job, stream its logs, exit with its status",
               "Run `python -m autoqra search ...` on a Ray cluster through the Ray Jobs SDK (this folder is the "
               "job's working directory); the search's --executor ray then uses the whole cluster."),
}


def _add_result_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    import importlib

    for name, (module, help_text, description) in _RESULT_COMMANDS.items():
        parser = sub.add_parser(name, parents=[common], help=help_text, description=description)
        getattr(importlib.import_module(f"autoqra.commands.{module}"), f"add_{name}_arguments")(parser)


def configure_logging(verbose: bool, quiet: bool) -> None:
    """The one ``autoqra`` logger: plain messages on stderr (progress, settings); stdout is for results."""
    logger = logging.getLogger("autoqra")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def quiet_libraries(command: str, verbose: bool) -> None:
    """Third-party verbosity, set once here at the CLI edge (library code never changes it)."""
    if verbose:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a bar per trial would drown the search's own progress
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if command in ("search", "report", "dashboard", "export"):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        quiet_libraries(args.command, args.verbose)
        if args.command == "estimate":
            from autoqra.commands.estimate import run_estimate

            return run_estimate(args)
        if args.command == "trial":
            from autoqra.commands.trial import run_trial_command

            return run_trial_command(args)
        if args.command == "search":
            from autoqra.commands.search import run_search_command

            return run_search_command(args)
        if args.command in _RESULT_COMMANDS:
            import importlib

            module = importlib.import_module(f"autoqra.commands.{_RESULT_COMMANDS[args.command][0]}")
            return int(getattr(module, f"run_{args.command}_command")(args))
        if args.command == "priors":
            from autoqra.commands.priors import run_priors_command

            return run_priors_command(args)
        raise AssertionError(f"unhandled command {args.command}")
    except AutoQRAError as exc:
        print(f"autoqra: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("autoqra: interrupted", file=sys.stderr)
        return 130
