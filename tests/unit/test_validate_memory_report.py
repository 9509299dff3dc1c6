"""experiments/validate_memory_gpu.py --from-json: the document from saved GPU runs, one section per card."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAVED = ROOT / "experiments" / "results" / "memory-validation" / "h200.json"


def test_two_saved_runs_give_one_section_each_and_say_where_they_differ(tmp_path: Path) -> None:
    first = json.loads(SAVED.read_text())
    second = copy.deepcopy(first)
    second["device"] = "Other GPU"
    second["rows"][0]["measured_peak"] += 1  # one row measured differently on the second card
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    out = tmp_path / "doc.md"
    done = subprocess.run([sys.executable, "experiments/validate_memory_gpu.py", "--from-json", str(a), str(b),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = out.read_text()
    n = len(first["rows"])
    assert f"## {first['device']}" in doc and "## Other GPU" in doc
    assert f"on the Other GPU, {n - 1} of {n} rows measured byte for byte the same peak" in doc
    assert doc.count("| model | plan |") == 2
    assert str(a) in doc and str(b) in doc  # the command that rewrites it names both files
