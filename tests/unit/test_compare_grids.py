"""`experiments/compare.py --tasks/--seeds`: which grid cells a run asks for."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _compare():  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parents[2] / "experiments" / "compare.py"
    spec = importlib.util.spec_from_file_location("compare_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tasks_and_seeds_select_grid_cells():
    c = _compare()
    every = c.grids("all")
    assert c.select_grids(every, None, None) == tuple(every)
    assert [(g.task, g.budget, g.seeds) for g in c.select_grids(every, ["news"], [0])] == [
        ("news", "qlora", (0,)), ("news", "85%qlora", (0,))]
    # seeds 1 and 2 exist on the main grid only: the secondary grids drop out rather than run seed 0
    assert [(g.task, g.budget, g.seeds) for g in c.select_grids(every, None, [2, 1])] == [("news", "qlora", (1, 2))]
    assert c.select_grids(every, ["codebook"], [1]) == ()
