"""The architecture holds: the import-linter contracts in pyproject.toml are kept, and each one
breaks when the code breaks it (a copy of the package with one bad import planted)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lakewarden

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(lakewarden.__file__).resolve().parent
# import-linter's command, installed beside this interpreter with the test extras
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=package_parent,
        timeout=300,
    )


def test_the_contracts_are_kept() -> None:
    done = lint_imports(PACKAGE.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        ("core/health.py", "import duckdb", "store/ is the only code that talks to DuckDB"),
        ("core/session.py", "import opentelemetry.trace", "telemetry/ is the only code"),
        ("signals/checks.py", "import lakewarden.core.tracker", "Data flows one way"),
        ("store/engine.py", "import lakewarden.store.audit", "No import cycles"),
    ],
    ids=["duckdb-in-core", "otel-in-core", "signals-import-core", "cycle-in-store"],
)
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, module: str, planted: str, broken: str
) -> None:
    copy = tmp_path / "lakewarden"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    text = target.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    target.write_text(head + sep + f"\n{planted}\n" + rest)
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    report = " ".join(done.stdout.split())
    assert f"{broken}" in report and "BROKEN" in report, report
