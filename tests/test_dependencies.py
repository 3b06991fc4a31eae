"""Every module lakewarden imports comes from the standard library or a declared dependency.

A fresh virtual environment has only what ``[project].dependencies`` brings; a machine whose
global Python happens to have more (numpy, once) hides a missing declaration until a user's
first command fails.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "lakewarden"


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}


def imported_roots() -> dict[str, set[str]]:
    """Top-level module -> files importing it, for every absolute import in the package."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_is_stdlib_or_declared() -> None:
    deps = declared()
    owners = packages_distributions()
    undeclared = {}
    for module, files in sorted(imported_roots().items()):
        if module == "lakewarden" or module in sys.stdlib_module_names:
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if not dists & deps:
            undeclared[module] = (sorted(dists) or ["not installed"], sorted(files))
    assert not undeclared, (
        f"imported but not in [project].dependencies (module: distributions, files): {undeclared}"
    )


def test_the_check_sees_numpy() -> None:
    # The failure this guards against: signals/anomaly.py imports numpy.
    assert "numpy" in imported_roots()
    assert "numpy" in declared()


@pytest.mark.parametrize("module", ["lakewarden", "lakewarden.intake.cli"], ids=["package", "cli"])
def test_light_imports_stay_light(module: str) -> None:
    """``lakewarden --help`` must answer at once: the engine, Polars and the OTel SDK load only
    when a command needs them (they cost about a second)."""
    code = (
        f"import sys, {module}; "
        "heavy = sorted(m for m in ('duckdb', 'polars', 'opentelemetry.sdk', 'numpy', "
        "'fastapi', 'pyarrow', 'sqlglot') if m in sys.modules); print(heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
