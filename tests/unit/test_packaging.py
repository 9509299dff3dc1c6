"""The package list in pyproject.toml covers the source tree (it is explicit because the presets in
search_spaces/ ship as the package ``autoqra.search_spaces``), and ``import autoqra`` stays light."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_of_the_tree_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "autoqra").rglob("__init__.py")}
    found.add("autoqra.search_spaces")
    assert listed == found
    assert config["package-dir"]["autoqra.search_spaces"] == "search_spaces"
    assert (ROOT / "search_spaces" / "__init__.py").is_file()


def test_import_autoqra_and_help_do_not_import_torch():
    code = ("import sys, autoqra, autoqra.cli, autoqra.trials.backends\n"
            "autoqra.cli.build_parser().format_help()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_exports_resolve():
    import autoqra

    assert autoqra.SearchRequest.__name__ == "SearchRequest" and callable(autoqra.run_search)
    for name in autoqra.__all__:
        assert getattr(autoqra, name) is not None
