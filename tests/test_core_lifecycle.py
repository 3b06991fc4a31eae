"""Three agents share a lake; spans, metrics and snapshots tell exactly who did what."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import lakewarden
from lakewarden.store import catalog

from conftest import sample, samples


@pytest.fixture
def story(warden: lakewarden.Warden) -> dict[str, lakewarden.Result]:
    results = {}
    with warden.session(agent="agent-a") as a:
        results["create"] = a.sql(
            "CREATE TABLE orders (id BIGINT, email VARCHAR, amount DOUBLE, updated_at TIMESTAMP)"
        )
        # 40 rows; every 4th email is NULL (10 nulls), amount NULL for id < 5 (5 nulls)
        results["insert"] = a.sql(
            "INSERT INTO orders SELECT i, CASE WHEN i % 4 = 0 THEN NULL ELSE 'u' || i END, "
            "CASE WHEN i < 5 THEN NULL ELSE i * 1.5 END, "
            "TIMESTAMP '2026-01-01' + INTERVAL (i) MINUTE FROM range(40) r(i)"
        )
        results["read"] = a.sql("SELECT id, email FROM orders WHERE id < ? ORDER BY id", [7])
    with warden.session(agent="agent-b") as b:
        results["alter"] = b.sql("ALTER TABLE orders ADD COLUMN note VARCHAR")
    with warden.session(agent="agent-c") as c:
        # deletes ids 30..39: of these, ids 32 and 36 have NULL email
        results["delete"] = c.sql("DELETE FROM orders WHERE id >= 30")
    return results


def test_results_report_kind_rows_and_snapshots(story: dict[str, lakewarden.Result]) -> None:
    assert story["create"].kind == "ddl"
    assert story["insert"].kind == "write"
    assert story["insert"].rows_affected == 40
    assert story["read"].kind == "read"
    assert story["read"].rows == [(i, None if i % 4 == 0 else f"u{i}") for i in range(7)]
    assert story["read"].pl().shape == (7, 2)
    assert story["delete"].rows_affected == 10
    ids = [story[k].snapshot_id for k in ("create", "insert", "alter", "delete")]
    assert ids == sorted(ids) and len(set(ids)) == 4 and None not in ids
    assert story["read"].snapshot_id is None


def test_write_signals_come_from_the_delta(story: dict[str, lakewarden.Result]) -> None:
    ins = story["insert"].signals["orders"]
    assert (ins.rows_inserted, ins.rows_deleted, ins.rows) == (40, 0, 40)
    nulls = {c.name: c.null_count for c in ins.columns}
    assert nulls == {"id": 0, "email": 10, "amount": 5, "updated_at": 0}
    alter = story["alter"].signals["orders"]
    assert alter.to_dict()["schema_diff"] == [
        {"column": "note", "change": "column_added", "old_type": None, "new_type": "VARCHAR"}
    ]
    dele = story["delete"].signals["orders"]
    assert (dele.rows_deleted, dele.rows) == (10, 30)
    assert {c.name: c.null_count for c in dele.columns} == {
        "id": 0,
        "email": 8,
        "amount": 5,
        "updated_at": 0,
        "note": 30,
    }
    assert dele.state.last_writer == "agent-c"


def test_spans_carry_the_contract_attributes(
    story: dict[str, lakewarden.Result], spans: InMemorySpanExporter
) -> None:
    by_name = {}
    for span in spans.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    insert = by_name["INSERT orders"][0]
    attrs = dict(insert.attributes or {})
    assert attrs["db.system.name"] == "duckdb"
    assert attrs["db.operation.name"] == "INSERT"
    assert attrs["db.collection.name"] == "orders"
    assert attrs["db.query.summary"] == "INSERT orders"
    assert "'u'" not in attrs["db.query.text"] and "?" in attrs["db.query.text"]
    assert attrs["gen_ai.agent.name"] == "agent-a"
    assert attrs["lakewarden.decision"] == "allowed"
    assert attrs["lakewarden.rows.written"] == 40
    assert attrs["lakewarden.snapshot.id"] == story["insert"].snapshot_id
    assert attrs["lakewarden.tables.written"] == ("orders",)
    assert f"{insert.context.trace_id:032x}" == story["insert"].trace_id
    read = dict(by_name["SELECT orders"][0].attributes or {})
    assert read["db.response.returned_rows"] == 7
    assert read["lakewarden.tables.read"] == ("orders",)
    delete = dict(by_name["DELETE orders"][0].attributes or {})
    assert delete["gen_ai.agent.name"] == "agent-c"
    assert delete["lakewarden.rows.written"] == 10


def test_prometheus_has_exact_table_signals(
    story: dict[str, lakewarden.Result], warden: lakewarden.Warden
) -> None:
    assert sample(warden, "lakewarden_table_rows", db_collection_name="orders") == 30
    assert sample(warden, "lakewarden_table_columns", db_collection_name="orders") == 5
    ratio = "lakewarden_column_null_ratio"
    assert sample(warden, ratio, lakewarden_column_name="email") == pytest.approx(8 / 30)
    assert sample(warden, ratio, lakewarden_column_name="amount") == pytest.approx(5 / 30)
    assert sample(warden, ratio, lakewarden_column_name="note") == 1.0
    assert sample(warden, ratio, lakewarden_column_name="id") == 0.0
    cur = warden.engine.cursor()
    commit_time = catalog.snapshot_time(cur, story["delete"].snapshot_id)
    assert commit_time is not None
    assert sample(
        warden,
        "lakewarden_table_last_modified_timestamp_seconds",
        db_collection_name="orders",
        gen_ai_agent_name="agent-c",
    ) == pytest.approx(commit_time.timestamp())
    assert (
        sample(
            warden,
            "lakewarden_schema_changes_total",
            db_collection_name="orders",
            lakewarden_change="column_added",
        )
        == 1
    )
    written = samples(warden, "lakewarden_rows_written_total")
    assert (
        written[
            frozenset(
                {
                    ("gen_ai_agent_name", "agent-a"),
                    ("db_collection_name", "orders"),
                    ("db_operation_name", "INSERT"),
                }
            )
        ]
        == 40
    )
    assert (
        sample(
            warden,
            "lakewarden_statements_total",
            gen_ai_agent_name="agent-c",
            lakewarden_decision="allowed",
        )
        == 1
    )
    assert (
        sample(
            warden,
            "db_client_operation_duration_seconds_count",
            gen_ai_agent_name="agent-a",
            db_operation_name="SELECT",
        )
        == 1
    )
    assert sample(warden, "lakewarden_build_info", version=lakewarden.__version__) == 1


def test_snapshots_name_agent_summary_and_trace(
    story: dict[str, lakewarden.Result], warden: lakewarden.Warden
) -> None:
    snaps = {s.snapshot_id: s for s in warden.snapshots("orders")}
    for key, agent, message in [
        ("create", "agent-a", "CREATE TABLE orders"),
        ("insert", "agent-a", "INSERT orders"),
        ("alter", "agent-b", "ALTER TABLE orders"),
        ("delete", "agent-c", "DELETE orders"),
    ]:
        snap = snaps[story[key].snapshot_id]
        assert (snap.agent, snap.message) == (agent, message)
        assert snap.trace_id == story[key].trace_id
        assert snap.span_id and len(snap.span_id) == 16
