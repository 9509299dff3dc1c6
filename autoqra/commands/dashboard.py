"""``autoqra dashboard RUN``: serve a run's Optuna study with optuna-dashboard on 127.0.0.1.

The study carries the metric names (``quality``, ``predicted_peak_bytes``) and, per trial, what a
person reads there: ``plan`` (bits, rank, hash, budget share), ``fidelity``, ``stage``,
``predicted_peak_bytes``, the raw metric and the whole result.
"""

from __future__ import annotations

import argparse

from autoqra.errors import AutoQRAError


def run_dashboard_command(args: argparse.Namespace) -> int:
    from autoqra.report.run import storage_of
    from autoqra.store.ledger import STUDY_NAME, open_study

    if not 0 < args.port < 65536:
        raise AutoQRAError(f"--port must be in 1..65535, not {args.port}")
    url, _ = storage_of(args.run)
    study = open_study(url, args.study or STUDY_NAME)  # a missing study fails here, in one line
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise AutoQRAError("optuna-dashboard is not installed: pip install 'autoqra[dashboard]' "
                           "(make setup installs it)") from None
    _check_port_free(args.port)
    print(f"serving study {study.study_name!r} of {url} at http://127.0.0.1:{args.port}/dashboard "
          "(Ctrl-C stops it)", flush=True)
    try:
        run_server(url, host="127.0.0.1", port=args.port)
    except OSError as exc:
        raise AutoQRAError(f"cannot serve on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
    return 0


def _check_port_free(port: int) -> None:
    """Fail in one line before announcing a server that could not start."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise AutoQRAError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}") from None


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run directory (runs/NAME) or a storage URL")
    parser.add_argument("--study", help="study name in a storage URL (default: autoqra)")
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
