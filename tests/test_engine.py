"""The engine: DuckLake loaded from its package, hardened, or a plain DuckDB file."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import lakewarden


def test_hardened_connection_refuses_files_and_settings(warden: lakewarden.Warden) -> None:
    cur = warden.engine.cursor()
    with pytest.raises(duckdb.Error, match=r"disabled|not allowed|Permission"):
        cur.execute("SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(duckdb.Error, match="locked"):
        cur.execute("SET enable_external_access = true")
    settings = dict(
        cur.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('enable_external_access', 'autoload_known_extensions', "
            "'autoinstall_known_extensions', 'lock_configuration', 'threads', "
            "'enable_external_file_cache')"
        ).fetchall()
    )
    assert settings == {
        "enable_external_access": "false",
        "autoload_known_extensions": "false",
        "autoinstall_known_extensions": "false",
        "lock_configuration": "true",
        "threads": "2",
        # A lake's local data files are not copied into memory (see store/engine.py).
        "enable_external_file_cache": "false",
    }


def test_plain_duckdb_file(tmp_path: Path) -> None:
    path = tmp_path / "shop.duckdb"
    with lakewarden.open(path, telemetry=lakewarden.Telemetry(env={})) as w, w.session("a") as s:
        s.sql("CREATE TABLE items (id INT, name VARCHAR)")
        r = s.sql("INSERT INTO items VALUES (1, NULL), (2, 'b'), (3, NULL)")
        assert r.snapshot_id is None
        assert r.signals["items"].rows == 3
        assert w.table("items").null_ratio("name") == pytest.approx(2 / 3)
        assert w.snapshots() == []
    with lakewarden.open(path, telemetry=lakewarden.Telemetry(env={})) as w:
        assert w.table("items").rows == 3


def test_sqlite_catalog_lake(tmp_path: Path) -> None:
    settings = lakewarden.Settings(catalog="sqlite")
    lake = tmp_path / "shared"
    with (
        lakewarden.open(lake, settings=settings, telemetry=lakewarden.Telemetry(env={})) as w,
        w.session("a") as s,
    ):
        s.sql("CREATE TABLE t (a INT)")
        assert s.sql("INSERT INTO t VALUES (1)").snapshot_id is not None
    assert (lake / "meta.sqlite").exists()
    # reopened without the setting: the catalog kind is detected from the folder
    with lakewarden.open(lake, telemetry=lakewarden.Telemetry(env={})) as w:
        assert w.engine.location.catalog == "sqlite"
        assert w.table("t").rows == 1


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM lw_state.main.table_state",
        "SELECT * FROM lw_state.main.refusals",
        "DELETE FROM lw_state.main.history",
        "USE lw_state",
    ],
    ids=["table-state", "refusals", "history-delete", "use"],
)
def test_agent_cursors_cannot_reach_the_state_database(warden: lakewarden.Warden, sql: str) -> None:
    """The second wall: even a statement that got past authorization runs on a cursor of the
    lake's DuckDB instance, which does not hold lakewarden's state database at all."""
    cur = warden.engine.cursor()
    with pytest.raises(duckdb.Error, match=r"(?i)catalog|does not exist|not found"):
        cur.execute(sql)
    databases = {
        row[0] for row in cur.execute("SELECT database_name FROM duckdb_databases()").fetchall()
    }
    assert "lw_state" not in databases
    # lakewarden itself still keeps its state there
    state = warden.engine.state_cursor()
    assert state.execute("SELECT count(*) FROM lw_state.main.refusals").fetchone() == (0,)
