"""Replaying other writers' commits: a run of commits that only changed rows is read with one
change-feed query per table and split by snapshot. The result must be what applying them one
by one gives: every commit's own write record, and table state equal to a full profile."""

from __future__ import annotations

from pathlib import Path

import pytest

import lakewarden
from lakewarden.store import catalog

# (statement, rows added, rows removed) of each outside commit; inserts with nulls, deletes and
# updates interleaved, so runs mix kinds of change.
COMMITS = [
    ("INSERT INTO t SELECT range + 100, NULL, now() FROM range(5)", 5, 0),
    ("INSERT INTO t VALUES (200, 'a', now()), (201, NULL, now())", 2, 0),
    ("DELETE FROM t WHERE id < 3", 0, 3),
    ("UPDATE t SET note = NULL WHERE id BETWEEN 10 AND 14", 5, 0),  # updated rows count as added
    ("INSERT INTO t SELECT range + 300, 'x', now() FROM range(40)", 40, 0),
    ("DELETE FROM t WHERE id >= 330", 0, 10),
    ("INSERT INTO t VALUES (400, NULL, now())", 1, 0),
]


@pytest.mark.parametrize("catalog_kind", ["duckdb", "sqlite"])
def test_a_run_of_outside_commits_replays_like_one_by_one(
    tmp_path: Path, catalog_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lakewarden.Settings(catalog=catalog_kind)
    warden = lakewarden.open(tmp_path / "lake", settings=settings)
    try:
        with warden.session(agent="etl") as s:
            s.sql("CREATE TABLE t (id BIGINT, note VARCHAR, ts TIMESTAMPTZ)")
            s.sql(
                "INSERT INTO t SELECT range, CASE WHEN range % 3 = 0 THEN 'n' END, now() "
                "FROM range(20)"
            )
        before = len(warden.tracker.writes("t"))
        raw = warden.engine.cursor()  # another writer: it takes no lock and tells nobody
        for sql, _, _ in COMMITS:
            raw.execute(sql)
        raw.close()
        feeds: list[tuple[str, int, int]] = []
        real = catalog.changes

        def counted(cur, table, first, last):  # type: ignore[no-untyped-def]
            feeds.append((table, first, last))
            return real(cur, table, first, last)

        monkeypatch.setattr(catalog, "changes", counted)
        warden.refresh()
        assert len(feeds) == 1, feeds  # one query for the whole run
        writes = warden.tracker.writes("t")[before:]
        assert [(w.rows_added, w.rows_removed) for w in writes] == [(a, r) for _, a, r in COMMITS]
        assert len({w.snapshot_id for w in writes}) == len(COMMITS)
        state = warden.table("t")
        cur = warden.engine.cursor()
        try:
            full = catalog.profile(cur, "t", ["id", "note", "ts"], None)
        finally:
            cur.close()
        assert state.rows == full.rows
        assert {c.name: c.null_count for c in state.columns} == full.null_counts
        assert state.snapshot_id == writes[-1].snapshot_id
    finally:
        warden.close()


HISTORY = [
    "CREATE SCHEMA staging",
    "CREATE TABLE staging.orders (id BIGINT, note VARCHAR)",
    "CREATE VIEW v AS SELECT 1 AS x",
    'CREATE TABLE "Odd ""Name"", here" (a INT)',
    "INSERT INTO staging.orders SELECT range, 'x' FROM range(3)",
    "INSERT INTO staging.orders SELECT range, 'y' FROM range(2000)",
    "DELETE FROM staging.orders WHERE id = 1",
    "DELETE FROM staging.orders WHERE id > 1500",
    "UPDATE staging.orders SET note = 'z' WHERE id = 2",
    "ALTER TABLE staging.orders ADD COLUMN extra INT",
    'INSERT INTO "Odd ""Name"", here" VALUES (1)',
    "DROP VIEW v",
    'DROP TABLE "Odd ""Name"", here"',
]


@pytest.mark.parametrize("catalog_kind", ["duckdb", "sqlite"])
def test_snapshots_read_from_the_catalog_tables_match_ducklakes_own_list(
    tmp_path: Path, catalog_kind: str
) -> None:
    """catalog.snapshots reads DuckLake's metadata tables (the snapshots() function lists the
    whole history first); every field and change map must be what snapshots() says."""
    warden = lakewarden.open(tmp_path / "lake", settings=lakewarden.Settings(catalog=catalog_kind))
    cur = warden.engine.cursor()
    try:
        for sql in HISTORY:
            cur.execute(sql)
        ours = catalog.snapshots(cur, since=-1)
        theirs = cur.execute(
            "SELECT snapshot_id, snapshot_time, author, commit_message, changes "
            "FROM lake.snapshots() ORDER BY snapshot_id"
        ).fetchall()
        assert [s.snapshot_id for s in ours] == [row[0] for row in theirs]
        for snap, (_, when, author, message, changes) in zip(ours, theirs, strict=True):
            assert snap.time.timestamp() == pytest.approx(when.timestamp(), abs=1e-3)
            assert (snap.agent, snap.message) == (author, message)
            expected = {
                key: [
                    v.replace('""', '"').replace('"', "") if key.endswith("_created") else v
                    for v in values
                ]
                for key, values in (changes or {}).items()
            }
            got = {
                key: [v.replace('"', "") for v in values] for key, values in snap.changes.items()
            }
            assert got == expected, snap.snapshot_id
        newest = catalog.snapshots(cur, limit=3)
        assert [s.snapshot_id for s in newest] == [row[0] for row in theirs[::-1][:3]]
        assert 'Odd "Name", here' in {
            v.split(".", 1)[1] for s in ours for v in s.changes.get("tables_created", [])
        }
    finally:
        cur.close()
        warden.close()
