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
