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
    assert "1 table, 1 failing check" in result.output  # email nulls 50% > 10%


def test_snapshots_of_the_whole_lake_say_what_changed(lake: Path) -> None:
    result = runner.invoke(app, ["snapshots", "--lake", str(lake), "--json"])
    assert result.exit_code == 0, result.output
    snaps = json.loads(result.stdout)
    assert [(s["summary"], s["rows_added"], s["rows_removed"]) for s in snaps] == [
        ("inserted into orders", 4, 0),
        ("created orders", 0, 0),
        ("created schema main", 0, 0),
    ]
    ids = [v for s in snaps for values in s["changes"].values() for v in values]
    assert ids and all(isinstance(v, int | str) for v in ids)
    assert all(isinstance(s["snapshot_id"], int) for s in snaps)
    table = runner.invoke(app, ["snapshots", "--lake", str(lake)], env={"COLUMNS": "200"})
    assert "inserted into orders" in table.stdout and "+4/-0" in table.stdout
    assert "inlined_insert" not in table.stdout and "tables_inserted_into" not in table.stdout


def test_check_shows_limits_as_people_read_them(lake: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\ntables:\n  orders:\n    freshness_sla: 70m\n"
        "    columns: {email: {max_null_ratio: 0.05}, id: {nullable: false}}\n"
    )
    result = runner.invoke(
        app,
        ["check", "orders", "--lake", str(lake), "--policy", str(policy)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "≤ 1.2 h since the last write" in result.stdout
    assert "≤ 5%" in result.stdout and "no NULL values" in result.stdout
    assert "inf" not in result.stdout.lower() and "[" not in result.stdout


def test_policy_problems_are_printed_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nagents:\n  a: {read: 3, bogus: 1}\n")
    result = runner.invoke(app, ["policy", "validate", str(bad)])
    assert result.exit_code == 2
    assert result.output.count("unknown key 'bogus'") == 1


def test_check_says_the_same_through_a_server(
    lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server_helpers import serve

    monkeypatch.setenv("LW_TEST_OPS", "ops-secret-token")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nagents: {ops: {token_env: LW_TEST_OPS, read: ['*']}}\n"
        "tables:\n  orders:\n    freshness_sla: 70m\n"
        "    columns: {email: {max_null_ratio: 0.05}}\n"
    )
    local = runner.invoke(app, ["check", "orders", "--lake", str(lake), "--policy", str(policy)])
    assert local.exit_code == 0, local.output
    with serve(lake, policy=policy) as served:
        remote = runner.invoke(
            app, ["check", "orders", "--server", served.url, "--token", "ops-secret-token"]
        )
    assert remote.exit_code == 0, remote.output

    def expected(output: str) -> list[str]:
        return [
            line.split("│")[3].strip()
            for line in output.splitlines()
            if "passing" in line or "failing" in line
        ]

    assert expected(local.stdout) == expected(remote.stdout)
    assert "≤ 5%" in expected(remote.stdout)


@pytest.mark.slow
def test_serve_without_a_policy_warns_about_open_mode(tmp_path: Path) -> None:
    import os
    import signal

    from server_helpers import free_port, serve_process

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LAKEWARDEN_"))}
    proc = serve_process(["--lake", str(tmp_path / "l"), "--port", str(port)], env)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert "open mode" in err and "any process on this machine can act as any agent" in err
    assert "--policy" in err
