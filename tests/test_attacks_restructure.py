"""Attacks on the verdict cache, the statement-kind door, transactions, the gate and metadata:
each needs several steps (or several agents), so they live here rather than in hostile.yaml."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import lakewarden
from lakewarden.errors import InvalidRequest, InvalidSQL
from lakewarden.store import catalog
from test_hostile import MARKER, _seed

POLICY = """version: 1
mode: enforce
agents:
  admin: {read: ['*'], write: ['*'], ddl: true}
  analyst: {read: ['public_*']}
  writer: {read: ['public_*'], write: [public_scratch]}
  builder: {read: ['public_*', 'scratch_*'], write: ['scratch_*'], ddl: true}
  keeper: {read: ['public_*']}
restore: [admin, keeper]
tables:
  public_scratch:
    volume: {max_delete_ratio: 0.5}
"""


@pytest.fixture
def warden(tmp_path: Path) -> Iterator[lakewarden.Warden]:
    _seed(tmp_path / "lake")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with lakewarden.open(
        tmp_path / "lake", policy=policy, telemetry=lakewarden.Telemetry(env={})
    ) as w:
        yield w


def _snapshot(w: lakewarden.Warden) -> int:
    cur = w.engine.cursor()
    try:
        return catalog.current_snapshot(cur)
    finally:
        cur.close()


# -- the verdict cache ---------------------------------------------------------------------------


def test_verdict_of_one_agent_is_not_reused_by_another(warden: lakewarden.Warden) -> None:
    sql = "SELECT * FROM secret_view"
    assert MARKER in str(warden.session("admin").sql(sql).rows)
    with pytest.raises(lakewarden.PolicyDenied):
        warden.session("analyst").sql(sql)


def test_view_redefined_after_allowed_read_is_checked_again(warden: lakewarden.Warden) -> None:
    sql = "SELECT * FROM public_orders_v"
    analyst = warden.session("analyst")
    analyst.sql(sql)
    warden.session("admin").sql(
        "CREATE OR REPLACE VIEW public_orders_v AS SELECT 1 AS id, salary FROM secret_salaries"
    )
    with pytest.raises(lakewarden.PolicyDenied):
        analyst.sql(sql)


def test_table_dropped_and_view_of_same_name_is_checked_again(warden: lakewarden.Warden) -> None:
    sql = "SELECT * FROM public_scratch"
    analyst = warden.session("analyst")
    analyst.sql(sql)
    admin = warden.session("admin")
    admin.sql("DROP TABLE public_scratch")
    admin.sql("CREATE VIEW public_scratch AS SELECT salary AS v FROM secret_salaries")
    with pytest.raises(lakewarden.PolicyDenied):
        analyst.sql(sql)


def test_verdict_taken_in_a_transaction_older_than_the_catalog_is_not_cached(
    warden: lakewarden.Warden,
) -> None:
    """A transaction plans on the catalog of its start; its verdict must not be replayed
    outside it once another session (same thread, the write lock is reentrant) changed it."""
    sql = "SELECT * FROM public_orders_v"
    analyst = warden.session("analyst")
    with analyst.transaction():
        analyst.sql("SELECT count(*) FROM public_orders")
        warden.session("admin").sql(
            "CREATE OR REPLACE VIEW public_orders_v AS SELECT 1 AS id, name, salary "
            "FROM secret_salaries"
        )
        assert MARKER not in str(analyst.sql(sql).rows)  # the transaction's own catalog
    with pytest.raises(lakewarden.PolicyDenied):
        warden.session("analyst").sql(sql)


def test_view_created_in_a_batch_is_checked_against_what_it_reads(
    warden: lakewarden.Warden,
) -> None:
    builder = warden.session("builder")
    with pytest.raises(lakewarden.PolicyDenied):
        builder.batch(
            [
                "CREATE VIEW scratch_v AS SELECT * FROM secret_salaries",
                "SELECT * FROM scratch_v",
            ]
        )
    builder.batch(
        ["CREATE VIEW scratch_v AS SELECT * FROM public_orders", "SELECT * FROM scratch_v"]
    )
    # the same text, now on a committed catalog where scratch_v may not be redefined by builder
    warden.session("admin").sql(
        "CREATE OR REPLACE VIEW scratch_v AS SELECT name AS id, salary FROM secret_salaries"
    )
    with pytest.raises(lakewarden.PolicyDenied):
        builder.sql("SELECT * FROM scratch_v")


def test_dry_run_view_does_not_leave_a_verdict_behind(warden: lakewarden.Warden) -> None:
    builder = warden.session("builder")
    builder.batch(
        ["CREATE VIEW scratch_w AS SELECT * FROM public_orders", "SELECT * FROM scratch_w"],
        dry_run=True,
    )
    with pytest.raises(lakewarden.ExecutionError):  # it was never committed
        builder.sql("SELECT * FROM scratch_w")
    warden.session("admin").sql("CREATE VIEW scratch_w AS SELECT * FROM secret_salaries")
    with pytest.raises(lakewarden.PolicyDenied):
        builder.sql("SELECT * FROM scratch_w")


@pytest.mark.parametrize(
    "params",
    [["public_orders"], ["secret_salaries"], ["SELECT * FROM secret_salaries"]],
    ids=["public", "secret", "sql"],
)
def test_same_text_with_other_params_cannot_name_a_table(
    warden: lakewarden.Warden, params: list[str]
) -> None:
    analyst = warden.session("analyst")
    for sql in ("SELECT * FROM query_table(?)", "SELECT * FROM query(?)"):
        with pytest.raises(lakewarden.PolicyDenied):
            analyst.sql(sql, params)


def test_same_text_with_other_params_reads_the_same_table(warden: lakewarden.Warden) -> None:
    analyst = warden.session("analyst")
    sql = "SELECT * FROM public_orders WHERE id = ?"
    assert analyst.sql(sql, [1]).rows == [(1, 1.5)]
    assert analyst.sql(sql, [2]).rows == [(2, 3.0)]


# -- the statement-kind door (MCP query / execute) -----------------------------------------------


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("INSERT INTO public_scratch VALUES (9) RETURNING *", InvalidRequest),
        ("UPDATE public_scratch SET v = 0 RETURNING *", InvalidRequest),
        ("DELETE FROM public_scratch RETURNING *", InvalidRequest),
        ("TRUNCATE public_scratch", InvalidRequest),
        ("CREATE TEMP TABLE t AS SELECT 1", InvalidRequest),
        ("CHECKPOINT", InvalidRequest),
        ("WITH x AS (DELETE FROM public_scratch RETURNING *) SELECT * FROM x", InvalidSQL),
        ("SELECT * FROM (INSERT INTO public_scratch VALUES (9) RETURNING *)", InvalidSQL),
        ("SELECT 1; DELETE FROM public_scratch", InvalidSQL),
        ("DELETE FROM public_scratch; SELECT 1", InvalidSQL),
        ("PIVOT public_scratch ON v USING count(*)", InvalidSQL),
        ("SELECT * FROM query('DELETE FROM public_scratch RETURNING *')", lakewarden.PolicyDenied),
        ("SELECT nextval('s')", lakewarden.PolicyDenied),
        ("SELECT setseed(0.5)", lakewarden.PolicyDenied),
    ],
)
def test_a_write_cannot_pass_the_read_door(
    warden: lakewarden.Warden, sql: str, error: type[lakewarden.LakewardenError]
) -> None:
    before = _snapshot(warden)
    with pytest.raises(error):
        warden.session("writer").sql(sql, expect="read")
    assert _snapshot(warden) == before
    assert len(warden.session("admin").sql("SELECT * FROM public_scratch").rows) == 4


def test_a_read_cannot_pass_the_write_door(warden: lakewarden.Warden) -> None:
    with pytest.raises(InvalidRequest):
        warden.session("writer").sql("SELECT * FROM public_scratch", expect="write")


# -- read-only agents, the gate ------------------------------------------------------------------


def test_read_only_agent_commits_nothing_through_a_transaction(
    warden: lakewarden.Warden,
) -> None:
    before = _snapshot(warden)
    analyst = warden.session("analyst")
    with analyst.transaction() as tx:
        analyst.sql("SELECT count(*) FROM public_orders")
    assert tx.result.snapshot_id is None
    analyst.batch(["SELECT 1", "SELECT 2"])
    analyst.batch(["SELECT 1"], dry_run=True)
    with pytest.raises(lakewarden.PolicyDenied), analyst.transaction():
        analyst.sql("DELETE FROM public_orders")
    assert _snapshot(warden) == before


@pytest.mark.parametrize(
    "statements",
    [
        ["TRUNCATE public_scratch"],
        ["DELETE FROM public_scratch"],
        ["MERGE INTO public_scratch USING (SELECT 1 AS v) s ON true WHEN MATCHED THEN DELETE"],
        [
            "MERGE INTO public_scratch USING (SELECT v FROM public_scratch) s "
            "ON public_scratch.v = s.v WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT "
            "VALUES (1)"
        ],
        ["DELETE FROM public_scratch", "INSERT INTO public_scratch VALUES (1), (2), (3), (4)"],
    ],
    ids=["truncate", "delete", "merge-delete", "merge-delete-insert", "delete-then-refill"],
)
def test_gate_holds_against_every_kind_of_mass_delete(
    warden: lakewarden.Warden, statements: list[str]
) -> None:
    before = _snapshot(warden)
    with pytest.raises(lakewarden.QualityGateFailed):
        warden.session("writer").batch(statements)
    assert _snapshot(warden) == before
    dry = warden.session("writer").batch(statements, dry_run=True)
    assert dry.dry_run and dry.violations and _snapshot(warden) == before


# -- restore, accept-anomaly and metadata --------------------------------------------------------


@pytest.mark.parametrize("agent", ["analyst", "writer", "builder"])
def test_unlisted_agents_may_not_restore_or_accept(warden: lakewarden.Warden, agent: str) -> None:
    with pytest.raises(lakewarden.PolicyDenied):
        warden.restore("public_scratch", 1, agent=agent)
    for table in ("public_scratch", "secret_salaries", "no_such_table"):
        with pytest.raises(lakewarden.PolicyDenied):
            warden.accept_anomaly(table, agent=agent)


def test_accept_anomaly_is_no_existence_oracle(warden: lakewarden.Warden) -> None:
    """keeper may accept anomalies but not read secret_salaries: a secret table answers as a
    missing one."""
    errors = []
    for table in ("secret_salaries", "no_such_table"):
        with pytest.raises(lakewarden.NotFound) as caught:
            warden.accept_anomaly(table, agent="keeper")
        errors.append(caught.value.message.replace(table, "T"))
    assert errors[0] == errors[1]


def test_metadata_hides_tables_the_agent_cannot_read(warden: lakewarden.Warden) -> None:
    names = {t.name for t in warden.tables("analyst")}
    assert names == {"public_orders", "public_scratch"}
    for name in ("secret_salaries", "secret_view", "lakewarden.audit", "public_orders_v"):
        with pytest.raises(lakewarden.NotFound):
            warden.describe(name, "analyst")
        with pytest.raises(lakewarden.NotFound):
            warden.table(name, "analyst")
    with pytest.raises(lakewarden.PolicyDenied):
        warden.audit("admin", caller="analyst")
    assert all(r["agent"] == "analyst" for r in warden.audit(caller="analyst"))
    text = str([s.to_dict() for s in warden.snapshots(agent="analyst")])
    assert "secret_salaries" not in text


# -- agent-caused errors are structured ----------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "params", "kwargs"),
    [
        ("SELECT 1", None, {"max_rows": -1}),
        ("SELECT 1", None, {"max_rows": 0}),
        ("SELECT 1", None, {"max_rows": "x"}),
        ("SELECT 1", None, {"expect": "bogus"}),
        ("SELECT ?", [object()], {}),
        ("SELECT ?", "abc", {}),
        ("SELECT ?", [1, 2], {}),
        ("SELECT $1", None, {}),
        ("SELECT * FROM public_orders WHERE id = ?", ["1; DROP TABLE x"], {}),
        ("INSERT INTO public_scratch VALUES (?)", [2**70], {}),
        ("SELECT * FROM public_orders AT (VERSION => 1)", None, {}),
        (123, None, {}),
        (b"SELECT 1", None, {}),
        ("", None, {}),
        (";", None, {}),
    ],
)
def test_agent_input_fails_as_a_lakewarden_error(
    warden: lakewarden.Warden, sql: object, params: object, kwargs: dict[str, object]
) -> None:
    with pytest.raises(lakewarden.LakewardenError):
        warden.session("writer").sql(sql, params, **kwargs)  # type: ignore[arg-type]
