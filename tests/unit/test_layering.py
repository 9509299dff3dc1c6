"""Imports flow one way (DESIGN.md §2):
errors <- domain <- space <- priors <- store <- search <- trials <- executors <- report <- commands <- cli."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "autoqra"
LAYERS = ["errors", "domain", "space", "priors", "store", "search", "trials", "executors", "report", "commands", "cli"]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "autoqra" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def test_imports_point_only_upward():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        own = layer_of(".".join(rel.parts))
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                target = layer_of(name)
                if target is not None and target > own:
                    offenders.append(f"{rel} imports {name}")
    assert not offenders, offenders
