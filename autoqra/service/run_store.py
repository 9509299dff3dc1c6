"""Where a search keeps its trials, and what a resume or a second search on one study must match.

``--storage`` takes any SQLAlchemy URL Optuna accepts; ``postgresql://`` means the pinned psycopg
driver (``postgresql+psycopg://``). The URL is checked (parsed, then one connection) before a
search starts, so an unreachable database is one line, not a traceback after the priors. A study
holds its run's settings as user attributes (see :mod:`autoqra.store.ledger`): a resume, or a second
search joining the study, is refused when its memory model's version, model, task, space or budget
differ (a resume also needs the same strategy, seed and preset), with one line naming the first
difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoqra.errors import AutoQRAError
from autoqra.store.ledger import StoreError, sqlite_url
from autoqra.store.ledger import normalize_url as normalize_url  # re-exported for the service's callers

#: settings a second search writing the same study must share (its trials are compared with ours)
JOIN_KEYS = ("memory_model", "model", "task", "space", "budget_bytes")
#: settings a resume must share: the search is replayed from them
RESUME_KEYS = (*JOIN_KEYS, "strategy", "seed", "preset")


def shown(url: str) -> str:
    """The URL as printed and written to settings.json: the password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def check_reachable(url: str) -> None:
    """One connection to the database (5 s timeout); StoreError with the driver's first line."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not Path(database).parent.is_dir():
            raise StoreError(f"--storage {url}: folder {Path(database).parent} does not exist")
        return
    connect_args = {"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # drivers raise their own types (OperationalError, ModuleNotFoundError, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"cannot reach the database {shown(url)}: {reason}") from None


def study_settings(url: str, study: str) -> dict[str, Any] | None:
    """The autoqra settings kept with ``study`` at ``url``; None when there is no such study.
    StoreError for a study of another kind (trials but no autoqra settings)."""
    import optuna

    from autoqra.store.ledger import rdb_storage, run_info

    storage = rdb_storage(url)
    names = {s.study_name for s in optuna.study.get_all_study_summaries(storage=storage, include_best_trial=False)}
    if study not in names:
        return None
    loaded = optuna.load_study(study_name=study, storage=storage)
    settings = run_info(loaded).get("settings")
    if settings is None:
        if loaded.get_trials(deepcopy=False):
            raise StoreError(f"study {study!r} at {shown(url)} is not an autoqra study (its trials carry no autoqra "
                             "settings); choose another --study")
        return None
    return dict(settings)


def stored_settings(run_dir: Path | None, url: str | None, study: str) -> dict[str, Any]:
    """The settings of the run to resume: its study's, else the run directory's settings.json."""
    settings = study_settings(url, study) if url is not None else None
    if settings is None and run_dir is not None:
        path = run_dir / "settings.json"
        if not path.is_file():
            raise AutoQRAError(f"--resume {run_dir}: no run there (no settings.json)")
        try:
            settings = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AutoQRAError(f"--resume {run_dir}: cannot read settings.json ({exc})") from None
        if url is None and not (run_dir / "trials.db").is_file() and not _elsewhere(settings, run_dir):
            raise AutoQRAError(f"--resume {run_dir}: the run has no trial store (trials.db) to resume from")
    if settings is None:
        raise AutoQRAError(f"--resume: no autoqra run in study {study!r} at {shown(url or '')}")
    if "request" not in settings or "run_id" not in settings:
        raise AutoQRAError("--resume: the run was written by an autoqra without resume support; start a new run")
    return settings


def _elsewhere(settings: dict[str, Any], run_dir: Path) -> bool:
    """Whether the run keeps its trials in a store other than its run directory's SQLite file."""
    stored = settings.get("storage")
    return bool(stored) and stored != shown(default_url(run_dir))


def resume_storage(settings: dict[str, Any], run_dir: Path | None) -> str | None:
    """The store a resumed run directory names in settings.json (None: its own trials.db). A URL whose
    password was not written down has to be given again."""
    if run_dir is None or not _elsewhere(settings, run_dir):
        return None
    stored = str(settings["storage"])
    if "***" in stored:
        raise AutoQRAError(f"--resume {run_dir}: the run keeps its trials at {stored}; settings.json does not "
                           "hold the password, so give the URL again with --storage")
    return stored


def run_key(settings: dict[str, Any]) -> dict[str, Any]:
    """The values :data:`RESUME_KEYS` compares, from a settings dict."""
    # a run from before the memory model had versions was priced by version 1
    key = {"memory_model": settings.get("memory_model", 1), "model": settings["model"], "task": settings["task"],
           "space": settings["space"], "budget_bytes": settings["budget"]["bytes"], "strategy": settings["strategy"],
           "seed": settings["seed"], "preset": settings["preset"]}
    return dict(json.loads(json.dumps(key)))  # tuples as lists, as the stored JSON has them


def first_difference(stored: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """``"budget_bytes 123 (run) vs 456 (now)"`` for the first differing key; None when all agree."""
    for key in keys:
        a, b = stored.get(key), new.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                inner = next((k for k in sorted({*a, *b}) if a.get(k) != b.get(k)), None)
                return f"{key} ({inner}: {_short(a.get(inner))} in the run, {_short(b.get(inner))} now)"
            return f"{key} ({_short(a)} in the run, {_short(b)} now)"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def default_url(run_dir: Path) -> str:
    return sqlite_url(run_dir)
