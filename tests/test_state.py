"""Table state survives a restart; a missing state is rebuilt; outside commits are replayed."""

from __future__ import annotations

from pathlib import Path

import pytest

import lakewarden
from lakewarden.store import catalog

from conftest import sample


def _open(lake_dir: Path) -> lakewarden.Warden:
    return lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={}))


def _profiles(warden: lakewarden.Warden) -> float:
    found = [
        v
        for k, v in __import__("conftest")
        .samples(warden, "lakewarden_signal_duration_seconds_count")
        .items()
        if ("lakewarden_signal", "profile") in k
    ]
    return found[0] if found else 0.0


@pytest.fixture
def lake(lake_dir: Path) -> Path:
    with _open(lake_dir) as w, w.session("etl") as s:
        s.sql("CREATE TABLE events (id INT, kind VARCHAR)")
        s.sql(
            "INSERT INTO events SELECT i, CASE WHEN i % 2 = 0 THEN NULL ELSE 'k' END "
            "FROM range(10) r(i)"
        )
    return lake_dir


def test_reopen_restores_signals_without_rescan(lake: Path) -> None:
    with _open(lake) as w:
        assert _profiles(w) == 0  # nothing was re-profiled: the state file was current
        assert sample(w, "lakewarden_table_rows", db_collection_name="events") == 10
        assert sample(w, "lakewarden_column_null_ratio", lakewarden_column_name="kind") == 0.5
        assert w.table("events").last_writer == "etl"


def test_missing_state_is_rebuilt_by_one_profile(lake: Path) -> None:
    (lake / "lakewarden-state.duckdb").unlink()
    with _open(lake) as w:
        assert _profiles(w) == 1
        state = w.table("events")
        assert (state.rows, state.column("kind").null_count) == (10, 5)  # type: ignore[union-attr]
        assert state.last_writer == "etl"  # recovered from the snapshot history


def test_commits_made_while_closed_are_replayed(lake: Path) -> None:
    import duckdb

    from lakewarden.store import extensions

    con = duckdb.connect()
    extensions.load(con, "ducklake")
    con.execute(f"ATTACH 'ducklake:{lake}/meta.ducklake' AS l (DATA_PATH '{lake}/data/')")
    con.execute("BEGIN")
    con.execute("INSERT INTO l.events VALUES (100, NULL), (101, NULL)")
    con.execute("CALL l.set_commit_message('nightly-batch', 'backfill')")
    con.execute("COMMIT")
    con.close()
    with _open(lake) as w:
        state = w.table("events")
        assert state.rows == 12
        assert state.column("kind").null_count == 7  # type: ignore[union-attr]
        assert state.last_writer == "nightly-batch"
        assert state.snapshot_id == catalog.current_snapshot(w.engine.cursor())


def test_an_idle_refresh_does_not_list_the_lake_history(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed: list[int | None] = []
    real = catalog.snapshots

    def spy(cur, *, since=None, limit=None):  # type: ignore[no-untyped-def]
        listed.append(since)
        return real(cur, since=since, limit=limit)

    monkeypatch.setattr(catalog, "snapshots", spy)
    with _open(lake) as w:
        listed.clear()
        for _ in range(3):
            w.refresh()
        assert listed == []  # nothing committed: the whole-history listing is skipped
