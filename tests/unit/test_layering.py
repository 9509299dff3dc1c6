"""Imports flow one way (DESIGN.md §2):
errors <- domain <- space <- priors <- store <- search <- trials <- executors <- report <- service <- commands <- cli,
and no module of the package imports itself back through others (no cycles, TYPE_CHECKING imports included)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "autoqra"
LAYERS = ["errors", "domain", "space", "priors", "store", "search", "trials", "executors", "report", "service",
          "commands", "cli"]


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


def module_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in the file, lazy and TYPE_CHECKING ones too)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle_inside_the_package():
    graph = module_imports()
    graph.pop("autoqra", None)  # the package's lazy re-exports (imported through __getattr__ only)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
