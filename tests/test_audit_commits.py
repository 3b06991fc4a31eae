"""Every committed change has its audit records in the commit that made it, exactly once, with
that commit's snapshot id; extra info written by anyone else never breaks reading the trail.

A commit that changed rows carries its records in the snapshot's extra info; the rest (DDL,
restores, writes that matched nothing) in the audit table. Both are checked here for every kind
of commit, because a record in the wrong place is a record lost or a snapshot without one."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import lakewarden
from lakewarden.store import audit, catalog
from lakewarden.store.engine import LAKE_ALIAS
from lakewarden.wire import AGENT_HEADER

from server_helpers import serve

SEED = [
    "CREATE TABLE orders (order_id BIGINT, status VARCHAR)",
    "INSERT INTO orders SELECT i, 'new' FROM range(10) r(i)",
]


@pytest.fixture
def warden(lake_dir: Path) -> Iterator[lakewarden.Warden]:
    w = lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={}))
    with w.session("seed") as s:
        for sql in SEED:
            s.sql(sql)
    yield w
    w.close()


def _sql(*statements: str) -> Callable[[lakewarden.Warden], int]:
    def run(w: lakewarden.Warden) -> int:
        with w.session("etl") as s:
            if len(statements) == 1:
                s.sql(statements[0])
            else:
                s.batch(list(statements))
        return len(statements)

    return run


def _restore(w: lakewarden.Warden) -> int:
    first = min(s.snapshot_id for s in w.snapshots("orders"))
    w.restore("orders", first, agent="etl")
    return 1


# (how the change is made, whether its records ride in the snapshot: it changed rows, no DDL)
COMMITS = [
    pytest.param(
        _sql("INSERT INTO orders (order_id, status) VALUES (100, 'x')"), True, id="insert-one-row"
    ),
    pytest.param(
        _sql("INSERT INTO orders (order_id, status) SELECT i, 'y' FROM range(100, 600) r(i)"),
        True,
        id="insert-select",
    ),
    pytest.param(_sql("UPDATE orders SET status = 'paid' WHERE order_id < 3"), True, id="update"),
    pytest.param(_sql("DELETE FROM orders WHERE order_id = 4"), True, id="delete"),
    pytest.param(
        _sql("DELETE FROM orders WHERE order_id < 0"), False, id="delete-matching-nothing"
    ),
    pytest.param(
        _sql("UPDATE orders SET status = 'z' WHERE false"), False, id="update-matching-nothing"
    ),
    pytest.param(
        _sql("INSERT INTO orders (order_id, status) SELECT 1, 'a' WHERE false"),
        False,
        id="insert-nothing",
    ),
    pytest.param(_sql("CREATE TABLE other (i INT)"), False, id="create-table"),
    pytest.param(_sql("ALTER TABLE orders ADD COLUMN note VARCHAR"), False, id="alter-table"),
    pytest.param(
        _sql(
            "INSERT INTO orders (order_id, status) VALUES (200, 'b')",
            "UPDATE orders SET status = 'c' WHERE order_id = 1",
        ),
        True,
        id="batch-insert-update",
    ),
    pytest.param(
        _sql(
            "INSERT INTO orders (order_id, status) VALUES (300, 'b')",
            "DELETE FROM orders WHERE order_id = 300",
        ),
        True,
        id="batch-insert-then-delete-it",
    ),
    pytest.param(
        _sql("CREATE TABLE tmp (i INT)", "INSERT INTO tmp VALUES (1)", "DROP TABLE tmp"),
        False,
        id="batch-create-insert-drop",
    ),
    pytest.param(
        _sql("DELETE FROM orders WHERE order_id < 0", "UPDATE orders SET status = 'q' WHERE false"),
        False,
        id="batch-of-no-row-writes",
    ),
    pytest.param(_restore, False, id="restore"),
    # Writes that change rows in ways DuckLake might not treat as a change: each still makes one
    # snapshot carrying its records.
    pytest.param(
        _sql("UPDATE orders SET status = status WHERE order_id < 3"),
        True,
        id="update-to-own-value",
    ),
    pytest.param(
        _sql("UPDATE orders SET status = 'new' WHERE order_id < 3"),
        True,
        id="update-to-same-literal",
    ),
    pytest.param(
        _sql(
            "UPDATE orders SET status = 't' WHERE order_id = 1",
            "UPDATE orders SET status = 'new' WHERE order_id = 1",
        ),
        True,
        id="batch-update-then-revert",
    ),
    pytest.param(
        _sql(
            "MERGE INTO orders USING (SELECT 1 AS id) s ON orders.order_id = s.id "
            "WHEN MATCHED THEN UPDATE SET status = 'm'"
        ),
        True,
        id="merge-update",
    ),
    pytest.param(
        _sql(
            "MERGE INTO orders USING (SELECT 77 AS id) s ON orders.order_id = s.id "
            "WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'm')"
        ),
        True,
        id="merge-insert",
    ),
    pytest.param(
        _sql(
            "MERGE INTO orders USING (SELECT 1 AS id) s ON orders.order_id = s.id "
            "WHEN MATCHED THEN DELETE"
        ),
        True,
        id="merge-delete",
    ),
    pytest.param(
        _sql(
            "MERGE INTO orders USING (SELECT 1 AS id WHERE false) s "
            "ON orders.order_id = s.id WHEN MATCHED THEN DELETE"
        ),
        False,
        id="merge-matching-nothing",
    ),
    pytest.param(
        _sql(
            "MERGE INTO orders USING (SELECT 1 AS id) s ON orders.order_id = s.id "
            "WHEN MATCHED THEN DO NOTHING"
        ),
        False,
        id="merge-do-nothing",
    ),
    pytest.param(_sql("INSERT INTO orders SELECT * FROM orders"), True, id="insert-from-itself"),
    pytest.param(
        _sql("INSERT INTO orders SELECT * FROM orders LIMIT 0"), False, id="insert-limit-0"
    ),
    pytest.param(
        _sql("WITH x AS (SELECT 1) INSERT INTO orders SELECT 60, 'c' FROM x"),
        True,
        id="insert-with-cte",
    ),
    pytest.param(
        _sql("INSERT INTO orders BY NAME SELECT 'b' AS status, 90 AS order_id"),
        True,
        id="insert-by-name",
    ),
    pytest.param(_sql("INSERT INTO orders DEFAULT VALUES"), True, id="insert-default-values"),
    pytest.param(
        _sql(
            "UPDATE orders SET status = o2.status FROM orders o2 "
            "WHERE orders.order_id = o2.order_id AND orders.order_id < 2"
        ),
        True,
        id="update-from-join",
    ),
    pytest.param(
        _sql("DELETE FROM orders USING (SELECT 3 AS id) s WHERE orders.order_id = s.id"),
        True,
        id="delete-using",
    ),
    pytest.param(
        _sql(
            "DELETE FROM orders WHERE order_id < 0",
            "INSERT INTO orders (order_id, status) VALUES (400, 'a')",
            "DELETE FROM orders WHERE order_id = 400",
        ),
        True,
        id="batch-no-row-write-then-insert-then-delete-it",
    ),
    pytest.param(_sql("TRUNCATE orders"), True, id="truncate"),
]


def _audit_rows(w: lakewarden.Warden) -> int:
    cur = w.engine.cursor()
    try:
        return int(cur.execute(f"SELECT count(*) FROM {audit.TABLE}").fetchall()[0][0])
    finally:
        cur.close()


@pytest.mark.parametrize(("change", "inline"), COMMITS)
def test_a_commit_is_one_snapshot_with_one_record_per_statement(
    warden: lakewarden.Warden, change: Callable[[lakewarden.Warden], int], inline: bool
) -> None:
    cur = warden.engine.cursor()
    before = catalog.current_snapshot(cur)
    table_rows = _audit_rows(warden)
    statements = change(warden)
    after = catalog.current_snapshot(cur)
    assert after == before + 1, "one commit, one snapshot"
    mine = [r for r in warden.audit(agent="etl", limit=1000)]
    assert len(mine) == statements, mine
    assert {r["snapshot_id"] for r in mine} == {after}
    assert {r["decision"] for r in mine} <= {"allowed", "restored"}
    # Where the records went: inside the snapshot when rows changed, a table row otherwise.
    assert _audit_rows(warden) == table_rows + (0 if inline else statements)
    (extra,) = cur.execute(
        f"SELECT commit_extra_info FROM {LAKE_ALIAS}.snapshots() WHERE snapshot_id = ?", [after]
    ).fetchall()[0]
    assert ("audit" in json.loads(extra)) is inline
    cur.close()


def test_every_snapshot_of_a_mixed_history_has_its_records(warden: lakewarden.Warden) -> None:
    statements = sum(param.values[0](warden) for param in COMMITS)  # type: ignore[operator]
    cur = warden.engine.cursor()
    by_agent = cur.execute(
        f"SELECT snapshot_id FROM {LAKE_ALIAS}.snapshots() WHERE author = 'etl' ORDER BY 1"
    ).fetchall()
    cur.close()
    records = warden.audit(agent="etl", limit=1000)
    assert len(records) == statements
    assert sorted({r["snapshot_id"] for r in records}) == [sid for (sid,) in by_agent]
    assert len(by_agent) == len(COMMITS)


# Extra info any writer with catalog access may leave: none of it breaks the trail.
FORGED = [
    pytest.param('{"audit": "x"}', 0, id="audit-not-a-list"),
    pytest.param('{"audit": [1, null, "s", []]}', 0, id="entries-not-objects"),
    pytest.param(
        '{"audit": [{"decision": 5, "tables": "orders", "violations": {"a": 1}}]}',
        1,
        id="fields-of-the-wrong-type",
    ),
    pytest.param(
        '{"audit": [{"tables": [1, "t"], "violations": [1, {"rule": "r"}]}], "trace_id": 7}',
        1,
        id="mixed-lists",
    ),
    pytest.param('not json, but "audit"', 0, id="not-json"),
    pytest.param('["audit"]', 0, id="a-list"),
    pytest.param('"audit"', 0, id="a-string"),
    pytest.param(
        '{"audit": [], "trace_id": {"x": 1}, "commit_id": 5, "span_id": [1]}',
        0,
        id="trace-fields-not-strings",
    ),
    pytest.param('{"audit": ' + "[" * 100_000 + "]" * 100_000 + "}", 0, id="nesting-bomb"),
]


@pytest.mark.parametrize(("extra", "entries"), FORGED)
def test_forged_extra_info_never_breaks_the_trail(lake_dir: Path, extra: str, entries: int) -> None:
    with lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as w:
        with w.session("seed") as s:
            for sql in SEED:
                s.sql(sql)
        cur = w.engine.cursor()
        cur.begin()
        cur.execute("INSERT INTO orders (order_id, status) VALUES (999, 'forged')")
        cur.execute(
            f"CALL {LAKE_ALIAS}.set_commit_message(?, ?, extra_info => ?)",
            ["intruder", "forged", extra],
        )
        cur.commit()
        cur.close()
        forged = w.audit(agent="intruder")
        assert len(forged) == entries
        for r in forged:
            assert r["decision"] is None or isinstance(r["decision"], str)
            assert all(isinstance(t, str) for t in r["tables"])
            assert all(isinstance(v, dict) for v in r["violations"])
        assert len(w.audit(agent="seed")) == len(SEED)
    with (
        serve(lake_dir) as served,
        httpx.Client(base_url=served.url, headers={AGENT_HEADER: "intruder"}) as http,
    ):
        response = http.get("/v1/audit", params={"agent": "intruder"})
        assert response.status_code == 200, response.text
        assert len(response.json()["records"]) == entries
        listed = http.get("/v1/snapshots")
        assert listed.status_code == 200, listed.text
        assert "intruder" in {s["agent"] for s in listed.json()["snapshots"]}


def test_a_write_to_another_schema_is_one_snapshot_with_its_record(
    warden: lakewarden.Warden,
) -> None:
    with warden.session("seed") as s:
        s.sql("CREATE SCHEMA s2")
        s.sql("CREATE TABLE s2.t (i INT)")
    cur = warden.engine.cursor()
    before = catalog.current_snapshot(cur)
    with warden.session("etl") as s:
        s.sql("INSERT INTO s2.t VALUES (1)")
    after = catalog.current_snapshot(cur)
    cur.close()
    assert after == before + 1
    assert [r["snapshot_id"] for r in warden.audit(agent="etl")] == [after]


# Writes an agent may not make, or the engine refuses: no snapshot, no committed record.
REFUSED = [
    pytest.param(["INSERT INTO orders VALUES (50, 'r') RETURNING order_id"], id="returning"),
    pytest.param(["DELETE FROM orders WHERE false RETURNING 5"], id="returning-on-no-row"),
    pytest.param(["INSERT OR REPLACE INTO orders VALUES (1, 'r')"], id="insert-or-replace"),
    pytest.param(["INSERT INTO orders VALUES (1, 'r') ON CONFLICT DO NOTHING"], id="on-conflict"),
    pytest.param(["CREATE TEMP TABLE t AS SELECT 1 AS i"], id="temp-table"),
    pytest.param(
        ["DELETE FROM orders WHERE false", "INSERT INTO temp.main.t VALUES (1)"],
        id="batch-with-temp-write",
    ),
    pytest.param(["INSERT INTO memory.main.m VALUES (1)"], id="memory-database"),
    pytest.param(["COPY orders FROM 'orders.csv'"], id="copy"),
    pytest.param(["CALL lake.set_commit_message('x', 'y')"], id="set-commit-message"),
    pytest.param(["INSERT INTO __lakewarden.audit (agent) VALUES ('x')"], id="audit-table"),
]


@pytest.mark.parametrize("statements", REFUSED)
def test_a_refused_write_makes_no_snapshot_and_no_committed_record(
    warden: lakewarden.Warden, statements: list[str]
) -> None:
    cur = warden.engine.cursor()
    before = catalog.current_snapshot(cur)
    table_rows = _audit_rows(warden)
    with pytest.raises(lakewarden.LakewardenError), warden.session("etl") as s:
        if len(statements) == 1:
            s.sql(statements[0])
        else:
            s.batch(statements)
    assert catalog.current_snapshot(cur) == before
    cur.close()
    assert _audit_rows(warden) == table_rows
    records = warden.audit(agent="etl")
    assert records and all(r["snapshot_id"] is None for r in records)
    assert {r["decision"] for r in records} <= {"denied", "blocked", "failed"}


def test_concurrent_writers_each_get_their_own_snapshot_and_records(
    warden: lakewarden.Warden,
) -> None:
    writers, each = 4, 5

    def write(n: int) -> None:
        with warden.session(f"w{n}") as s:
            for i in range(each):
                if i % 2:
                    s.sql("DELETE FROM orders WHERE order_id < 0")
                else:
                    s.sql("INSERT INTO orders (order_id, status) VALUES (?, ?)", [n * 100 + i, "c"])

    cur = warden.engine.cursor()
    before = catalog.current_snapshot(cur)
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = catalog.current_snapshot(cur)
    authors = dict(
        cur.execute(
            f"SELECT snapshot_id, author FROM {LAKE_ALIAS}.snapshots() WHERE snapshot_id > ?",
            [before],
        ).fetchall()
    )
    cur.close()
    assert after == before + writers * each
    seen: list[int] = []
    for n in range(writers):
        mine = warden.audit(agent=f"w{n}", limit=1000)
        assert len(mine) == each
        assert all(authors[r["snapshot_id"]] == f"w{n}" for r in mine)
        seen += [r["snapshot_id"] for r in mine]
    assert sorted(seen) == list(range(before + 1, after + 1))
