"""The CLI over the same core: check, snapshots, policy validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lakewarden
from lakewarden.intake.cli import app

runner = CliRunner()


@pytest.fixture
def lake(lake_dir: Path) -> Path:
    with (
        lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as w,
        w.session("etl") as s,
    ):
        s.sql("CREATE TABLE orders (id INT, email VARCHAR)")
        s.sql("INSERT INTO orders VALUES (1, NULL), (2, 'b'), (3, 'c'), (4, NULL)")
    return lake_dir


def test_check_json(lake: Path) -> None:
    result = runner.invoke(app, ["check", "orders", "--lake", str(lake), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rows"] == 4 and data["last_writer"] == "etl"
    assert {c["name"]: c["null_ratio"] for c in data["columns"]} == {"id": 0.0, "email": 0.5}


def test_check_table_view(lake: Path) -> None:
    result = runner.invoke(app, ["check", "orders", "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    assert "50.00%" in result.stdout and "etl" in result.stdout


def test_check_unknown_table_is_a_clear_error(lake: Path) -> None:
    result = runner.invoke(app, ["check", "nope", "--lake", str(lake)])
    assert result.exit_code == 2
    assert "not_found" in result.output


def test_snapshots(lake: Path) -> None:
    result = runner.invoke(app, ["snapshots", "orders", "--lake", str(lake), "--json"])
    assert result.exit_code == 0, result.output
    snaps = json.loads(result.stdout)
    assert [(s["agent"], s["message"], s["rows_added"]) for s in snaps] == [
        ("etl", "INSERT orders", 4),
        ("etl", "CREATE TABLE orders", 0),
    ]
    assert all(len(s["trace_id"]) == 32 for s in snaps)


def test_policy_validate(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nmode: enforce\nagents:\n  etl: {write: [orders]}\n")
    assert runner.invoke(app, ["policy", "validate", str(good)]).exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmode: strict\n")
    result = runner.invoke(app, ["policy", "validate", str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml:2" in result.output


def test_watch_once_reports_failing_checks(lake: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\ntables:\n  orders:\n    freshness_sla: 1h\n"
        "    columns: {email: {max_null_ratio: 0.1}}\n"
    )
    result = runner.invoke(app, ["watch", "--lake", str(lake), "--policy", str(policy), "--once"])
    assert result.exit_code == 0, result.output
    assert "1 tables, 1 failing checks" in result.output  # email nulls 50% > 10%
