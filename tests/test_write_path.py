"""The write path: staged inserts, the write lock released at the commit, signals applied in
commit order and exact under concurrent writers, snapshot ids from the commit itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lakewarden
from lakewarden.store import catalog, staging

from conftest import sample

# (id, statement, target, staged): whether the statement's target is found by the tokenizer
# and replaced, or the statement runs unchanged (and is measured from the change feed).
SPANS = [
    ("values", "INSERT INTO t VALUES (1)", "t", "t"),
    ("column-list", "INSERT INTO t (a, b) VALUES (?, ?)", "t", "t"),
    ("qualified", "INSERT INTO lake.main.t SELECT 1", "t", "lake.main.t"),
    ("schema", "INSERT INTO main.t SELECT 1", "t", "main.t"),
    ("other-schema", "INSERT INTO s.t SELECT 1", "s.t", "s.t"),
    ("quoted", 'INSERT INTO "My T" VALUES (1)', "my t", '"My T"'),
    ("cte", "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "t", "t"),
    ("by-name", "INSERT INTO t BY NAME SELECT 1 AS a", "t", "t"),
    ("alias", "INSERT INTO t AS q SELECT 1", "t", "t"),
    ("reads-itself", "INSERT INTO t SELECT * FROM t", "t", "t"),
    ("string-mentions-insert", "INSERT INTO t VALUES ('INSERT INTO u')", "t", "t"),
    ("other-target", "INSERT INTO u VALUES (1)", "t", None),
    ("other-database", "INSERT INTO other.main.t VALUES (1)", "t", None),
    ("or-replace", "INSERT OR REPLACE INTO t VALUES (1)", "t", None),
    ("or-ignore", "INSERT OR IGNORE INTO t VALUES (1)", "t", None),
    ("on-conflict", "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", "t", None),
    ("returning", "INSERT INTO t VALUES (1) RETURNING *", "t", None),
    ("default-values", "INSERT INTO t DEFAULT VALUES", "t", None),
    ("comment-in-name", "INSERT INTO t/*x*/ VALUES (1)", "t", None),
    ("comment-in-keywords", "INSERT /* ( */ INTO t VALUES (1)", "t", None),
    ("not-an-insert", "DELETE FROM t", "t", None),
    ("insert-in-cte-string", "WITH x AS (SELECT 'INSERT INTO t') SELECT * FROM x", "t", None),
]


@pytest.mark.parametrize(
    ("sql", "target", "named"), [c[1:] for c in SPANS], ids=[c[0] for c in SPANS]
)
def test_the_target_is_found_by_the_engines_tokenizer(
    sql: str, target: str, named: str | None
) -> None:
    span = staging.target_span(sql, target)
    if named is None:
        assert span is None
    else:
        assert span is not None and sql[span[0] : span[1]] == named
        # Only the target's characters change: the rest is the text that was authorized.
        assert sql[: span[0]] + "STAGE" + sql[span[1] :] == sql.replace(named, "STAGE", 1)


@pytest.fixture
def lake(lake_dir: Path) -> Iterator[lakewarden.Warden]:
    w = lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={}))
    w.sql(
        "CREATE TABLE t (id BIGINT, v VARCHAR DEFAULT 'x', ts TIMESTAMPTZ DEFAULT now(), "
        "n INTEGER, tags VARCHAR[])"
    )
    yield w
    w.close()


def _truth(w: lakewarden.Warden, table: str, snapshot: int | None = None) -> dict[str, Any]:
    """A full profile of ``table`` (at ``snapshot``), straight from the engine."""
    cur = w.engine.cursor()
    try:
        at = f" AT (VERSION => {int(snapshot)})" if snapshot is not None else ""
        cols = [r[0] for r in cur.execute(f"DESCRIBE {table}").fetchall()]
        exprs = ", ".join(f'count(*) - count("{c}")' for c in cols)
        row = cur.execute(f"SELECT count(*), {exprs} FROM {table}{at}").fetchone()
        assert row is not None
        return {"rows": row[0], "nulls": dict(zip(cols, row[1:], strict=True))}
    finally:
        cur.close()


def _seen(signals: Any) -> dict[str, Any]:
    return {"rows": signals.rows, "nulls": {c.name: c.null_count for c in signals.columns}}


# (id, statement, params, staged): each insert's signals equal a profile of the table at its
# own snapshot, whether it was staged or measured from the change feed.
INSERTS = [
    ("one-row-params", "INSERT INTO t (id) VALUES (?)", [1], True),
    ("nulls-and-defaults", "INSERT INTO t (id, n) VALUES (2, NULL), (3, 4)", None, True),
    ("all-columns", "INSERT INTO t VALUES (4, NULL, NULL, NULL, NULL)", None, True),
    ("list-param-null", "INSERT INTO t (id, tags) VALUES (?, ?)", [5, None], True),
    ("select", "INSERT INTO t (id, v) SELECT range, NULL FROM range(1000)", None, True),
    ("by-name", "INSERT INTO t BY NAME SELECT 7 AS id, ['a'] AS tags", None, True),
    ("cte", "WITH q AS (SELECT 8 AS id) INSERT INTO main.t (id) SELECT id FROM q", None, True),
    ("self-copy", "INSERT INTO t SELECT * FROM t WHERE id < 3", None, True),
    ("explicit-default", "INSERT INTO t VALUES (9, DEFAULT, NULL, 1, NULL)", None, False),
]


@pytest.mark.parametrize(
    ("sql", "params", "staged"), [c[1:] for c in INSERTS], ids=[c[0] for c in INSERTS]
)
def test_an_inserts_signals_equal_a_profile_at_its_snapshot(
    lake: lakewarden.Warden, monkeypatch: pytest.MonkeyPatch, sql: str, params: Any, staged: bool
) -> None:
    used: list[bool] = []
    real = staging.insert

    def counted(*args: Any, **kwargs: Any) -> Any:
        done = real(*args, **kwargs)
        used.append(done is not None)
        return done

    monkeypatch.setattr(staging, "insert", counted)
    with lake.session("writer") as s:
        s.sql("INSERT INTO t (id, n) VALUES (0, 1)")  # not empty: a self-copy reads something
        result = s.sql(sql, params)
    assert any(used[1:]) is staged
    signals = result.signals["t"]
    assert result.snapshot_id is not None
    assert _seen(signals) == _truth(lake, "t", result.snapshot_id) == _truth(lake, "t")
    assert signals.rows_inserted == result.rows_affected
    (snap,) = [x for x in lake.snapshots("t", limit=5) if x.snapshot_id == result.snapshot_id]
    assert snap.agent == "writer" and snap.trace_id == result.trace_id


def test_a_failed_staged_insert_commits_nothing_and_the_session_goes_on(
    lake: lakewarden.Warden,
) -> None:
    with lake.session("writer") as s:
        with pytest.raises(lakewarden.LakewardenError):
            s.sql("INSERT INTO t (id) VALUES ('not a number')")
        assert _truth(lake, "t")["rows"] == 0
        # The stage made in the rolled-back transaction is gone with it: a new one is made.
        assert s.sql("INSERT INTO t (id) VALUES (1)").signals["t"].rows == 1
        assert s.sql("INSERT INTO t (id) VALUES (2)").signals["t"].rows == 2


def test_a_batch_of_staged_inserts_is_one_delta(lake: lakewarden.Warden) -> None:
    with lake.session("writer") as s:
        result = s.batch(
            [
                "INSERT INTO t (id) VALUES (1)",
                "INSERT INTO t (id, v) SELECT range, NULL FROM range(5)",
            ]
        )
    signals = result.signals["t"]
    assert signals.rows_inserted == 6
    assert _seen(signals) == _truth(lake, "t", result.snapshot_id)


def test_a_stage_follows_the_tables_shape(lake: lakewarden.Warden) -> None:
    with lake.session("writer") as s:
        s.sql("INSERT INTO t (id) VALUES (1)")
        s.sql("ALTER TABLE t ADD COLUMN extra INTEGER DEFAULT 5")
        result = s.sql("INSERT INTO t (id) VALUES (2)")
    assert _seen(result.signals["t"]) == _truth(lake, "t")
    assert lake.sql("SELECT extra FROM t WHERE id = 2").rows == [(5,)]


def test_the_write_lock_is_free_while_signals_are_applied(
    lake: lakewarden.Warden, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Post-commit work runs after the lock: another writer can commit meanwhile."""
    applying = threading.Event()
    release = threading.Event()
    real = lake.tracker._apply_own

    def slow(*args: Any, **kwargs: Any) -> Any:
        applying.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(lake.tracker, "_apply_own", slow)
    first: list[Any] = []
    thread = threading.Thread(
        target=lambda: first.append(lake.sql("INSERT INTO t (id) VALUES (1)"))
    )
    thread.start()
    assert applying.wait(10)
    got = lake.engine.write_lock.acquire(timeout=2)
    assert got, "the write lock was still held after the commit"
    lake.engine.write_lock.release()
    release.set()
    thread.join(10)
    assert first[0].signals["t"].rows == 1


def test_signals_are_exact_under_8_concurrent_writers(lake: lakewarden.Warden) -> None:
    """Every write's own Result.signals equal a profile at its own snapshot; the gauges agree
    with the lake as soon as the last write has returned."""
    lake.sql("INSERT INTO t (id, n) SELECT range, range FROM range(100)")
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def agent(k: int) -> None:
        try:
            with lake.session(f"agent-{k}") as s:
                for i in range(6):
                    if i % 3 == 2:  # a delete or an update: measured from the change feed
                        sql = (
                            f"DELETE FROM t WHERE id = {k * 10 + i}"
                            if k % 2
                            else f"UPDATE t SET n = NULL WHERE id = {k}"
                        )
                        r = s.sql(sql)
                    else:
                        r = s.sql(
                            "INSERT INTO t (id, n) SELECT ? + range, CASE WHEN range % 2 = 0 "
                            "THEN NULL ELSE 1 END FROM range(?)",
                            [1000 * (k + 1) + 100 * i, k + i + 1],
                        )
                    with lock:
                        results.append(r)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 48
    ids = [r.snapshot_id for r in results]
    assert len(set(ids)) == 48, "two writes claimed one snapshot"
    for r in results:
        assert _seen(r.signals["t"]) == _truth(lake, "t", r.snapshot_id), r.summary
    # Visible within the documented delay (here: at once, when the write returns).
    truth = _truth(lake, "t")
    deadline = time.monotonic() + 0.1
    while sample(lake, "lakewarden_table_rows", db_collection_name="t") != truth["rows"]:
        assert time.monotonic() < deadline, "the gauge did not converge within 100 ms"
        time.sleep(0.005)
    assert _seen(lake.table("t")) == truth
    authors = {s.snapshot_id: s.agent for s in lake.snapshots("t", limit=200)}
    assert all(authors[r.snapshot_id] is not None for r in results)


def test_a_verdict_does_not_depend_on_the_data(tmp_path: Path) -> None:
    """Verdicts are cached until the catalog's shape changes, so they must not depend on data:
    the plan described is the binder's, which keeps a scan the optimizer could prune on
    statistics (EXPLAIN shows EMPTY_RESULT for these while no row matches)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nmode: enforce\nagents:\n"
        "  reader: {token_env: LW_T, read: [pub], write: [], ddl: false}\n"
        "  owner: {token_env: LW_O, read: ['*'], write: ['*'], ddl: true}\n"
    )
    for target in (tmp_path / "lake", tmp_path / "file.duckdb"):
        with lakewarden.open(target, policy=policy, telemetry=lakewarden.Telemetry(env={})) as w:
            w.sql("CREATE TABLE pub AS SELECT range AS x FROM range(10)", agent="owner")
            w.sql("CREATE TABLE secret AS SELECT range AS x FROM range(10)", agent="owner")
            hidden = (
                "SELECT x FROM pub UNION ALL "
                "SELECT x FROM query('SELECT * FROM secret') WHERE x > 1000"
            )
            with w.session("reader") as s:
                for _ in range(2):
                    with pytest.raises(lakewarden.PolicyDenied):
                        s.sql(hidden)
                w.sql("INSERT INTO secret VALUES (5000)", agent="owner")
                with pytest.raises(lakewarden.PolicyDenied):
                    s.sql(hidden)


def test_the_snapshot_id_comes_from_the_commit(lake: lakewarden.Warden) -> None:
    """No query after the commit: the id is the one after the snapshot the transaction read,
    and it is the snapshot DuckLake made (checked over inlined and file-backed inserts)."""
    with lake.session("writer") as s:
        for rows in (1, 5, 11, 200, 1):
            r = s.sql(f"INSERT INTO t (id) SELECT range FROM range({rows})")
            cur = lake.engine.cursor()
            try:
                assert r.snapshot_id == catalog.current_snapshot(cur)
            finally:
                cur.close()
