"""The audit trail and restore, through the SDK, REST, MCP and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client as MCPClient
from opentelemetry.trace import StatusCode
from typer.testing import CliRunner

import lakewarden
from lakewarden.intake.cli import app
from lakewarden.store import catalog
from lakewarden.wire import AGENT_HEADER

from server_helpers import Served, serve

POLICY = """\
version: 1
mode: enforce
restore: [ops]
agents:
  etl: {read: ["*"], write: [orders]}
  careless: {read: ["*"], write: [orders]}
  ops: {read: ["*"], write: []}
tables:
  orders:
    columns: {order_id: {nullable: false}}
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def _seed(warden: lakewarden.Warden) -> int:
    with warden.session("seed") as s:
        s.sql("CREATE TABLE orders (order_id BIGINT, status VARCHAR, amount DOUBLE)")
        return s.sql("INSERT INTO orders SELECT i, 'new', i * 1.5 FROM range(20) r(i)").snapshot_id


@pytest.fixture
def seeded(lake_dir: Path, policy: Path, spans) -> Iterator[tuple[lakewarden.Warden, int]]:  # type: ignore[no-untyped-def]
    with lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as w:
        good = _seed(w)
    w = lakewarden.open(
        lake_dir, policy=policy, telemetry=lakewarden.Telemetry(span_exporters=[spans], env={})
    )
    yield w, good
    w.close()


def test_blocked_write_has_one_audit_record_and_no_snapshot(seeded, spans) -> None:  # type: ignore[no-untyped-def]
    warden, _ = seeded
    cur = warden.engine.cursor()
    snap = catalog.current_snapshot(cur)
    before = cur.execute("SELECT * FROM orders ORDER BY ALL").fetchall()
    spans.clear()
    with warden.session("careless") as s, pytest.raises(lakewarden.QualityGateFailed):
        s.sql("INSERT INTO orders VALUES (NULL, 'bad', 0)")
    assert catalog.current_snapshot(cur) == snap
    assert cur.execute("SELECT * FROM orders ORDER BY ALL").fetchall() == before
    records = [r for r in warden.audit() if r["agent"] == "careless"]
    assert len(records) == 1
    (record,) = records
    assert (record["decision"], record["summary"], record["snapshot_id"]) == (
        "blocked",
        "INSERT orders",
        None,
    )
    assert record["violations"][0]["rule"] == "not_null:order_id"
    assert record["statement_hash"] and len(record["statement_hash"]) == 64
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [e.attributes["rule"] for e in span.events] == ["not_null:order_id"]  # type: ignore[index]
    assert record["trace_id"] == f"{span.context.trace_id:032x}"


def test_committed_write_audit_names_its_snapshot(seeded) -> None:  # type: ignore[no-untyped-def]
    warden, _ = seeded
    with warden.session("etl") as s:
        result = s.sql("UPDATE orders SET status = 'paid' WHERE order_id < 3")
    (record,) = [r for r in warden.audit(agent="etl")]
    assert (record["decision"], record["snapshot_id"], record["trace_id"]) == (
        "allowed",
        result.snapshot_id,
        result.trace_id,
    )
    assert record["tables"] == ["orders"]


def test_restore_undoes_a_careless_delete(seeded) -> None:  # type: ignore[no-untyped-def]
    warden, good = seeded
    with warden.session("etl") as s:
        s.sql("UPDATE orders SET status = 'paid' WHERE order_id < 5")
        prior = s.sql("SELECT * FROM orders ORDER BY ALL").rows
        prior_snapshot = warden.snapshots("orders", limit=1)[0].snapshot_id
    with warden.session("careless") as s:
        s.sql("DELETE FROM orders WHERE order_id >= 3")
    with pytest.raises(lakewarden.PolicyDenied):
        warden.restore("orders", prior_snapshot, agent="careless")
    result = warden.restore("orders", prior_snapshot, agent="ops")
    with warden.session("ops") as s:
        assert s.sql("SELECT * FROM orders ORDER BY ALL").rows == prior
    assert result.signals["orders"].rows == 20
    assert warden.table("orders").last_writer == "ops"
    newest = warden.snapshots("orders", limit=1)[0]
    assert (newest.snapshot_id, newest.agent) == (result.snapshot_id, "ops")
    assert newest.message == f"RESTORE orders TO {prior_snapshot}"
    (record,) = [r for r in warden.audit(agent="ops") if r["decision"] == "restored"]
    assert record["snapshot_id"] == result.snapshot_id
    assert good < prior_snapshot


def test_restore_brings_back_a_dropped_column(lake_dir: Path) -> None:
    with lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as w:
        good = _seed(w)
        with w.session("careless") as s:
            s.sql("ALTER TABLE orders DROP COLUMN amount")
            s.sql("DELETE FROM orders WHERE order_id > 10")
        w.restore("orders", good, agent="ops")
        with w.session("a") as s:
            assert s.sql("SELECT count(*), sum(amount) FROM orders").rows == [
                (20, sum(i * 1.5 for i in range(20)))
            ]
        assert [c.name for c in w.table("orders").columns] == ["order_id", "status", "amount"]


@pytest.mark.parametrize(
    ("table", "snapshot", "error"),
    [
        pytest.param("orders", 10_000, lakewarden.NotFound, id="future-snapshot"),
        pytest.param("nope", 1, lakewarden.NotFound, id="unknown-table"),
    ],
)
def test_restore_refuses_bad_targets(
    seeded,
    table: str,
    snapshot: int,  # type: ignore[no-untyped-def]
    error: type[Exception],
) -> None:
    warden, _ = seeded
    snap = catalog.current_snapshot(warden.engine.cursor())
    with pytest.raises(error):
        warden.restore(table, snapshot, agent="ops")
    assert catalog.current_snapshot(warden.engine.cursor()) == snap


@pytest.fixture
def served(lake_dir: Path, policy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    with lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as w:
        _seed(w)
    # open mode: identity from the header, so the REST and MCP calls below name their agent
    with serve(lake_dir) as s:
        yield s


def test_rest_batch_dry_run_restore_and_audit(served: Served) -> None:
    with httpx.Client(base_url=served.url, headers={AGENT_HEADER: "etl"}) as http:
        batch = http.post(
            "/v1/sql",
            json={
                "statements": [
                    "INSERT INTO orders VALUES (100, 'new', 1.0)",
                    "UPDATE orders SET status = 'paid' WHERE order_id = 1",
                ]
            },
        )
        assert batch.status_code == 200, batch.text
        body = batch.json()
        assert body["snapshot_id"] is not None and len(body["statements"]) == 2
        dry = http.post("/v1/sql", json={"sql": "DELETE FROM orders", "dry_run": True})
        assert dry.status_code == 200 and dry.json()["dry_run"] is True
        assert http.post("/v1/sql", json={"sql": "SELECT count(*) FROM orders"}).json()["rows"] == [
            [21]
        ]
        both = http.post("/v1/sql", json={"sql": "SELECT 1", "statements": ["SELECT 2"]})
        assert both.status_code == 400 and both.json()["error"]["code"] == "invalid_request"
        restored = http.post(
            "/v1/tables/orders/restore", json={"snapshot_id": body["snapshot_id"] - 1}
        )
        assert restored.status_code == 200, restored.text
        assert restored.json()["signals"]["orders"]["rows"] == 20
        missing = http.post("/v1/tables/orders/restore", json={"snapshot_id": 99_999})
        assert missing.status_code == 404
        audit = http.get("/v1/audit", params={"agent": "etl"}).json()["records"]
        # newest first: the refused restore to a missing snapshot, then the real one
        assert [r["decision"] for r in audit][:2] == ["failed", "restored"]
        assert {r["decision"] for r in audit} >= {"allowed", "restored"}


def test_mcp_restore_and_batch(served: Served) -> None:
    anyio.run(_mcp_restore_and_batch, served)


async def _mcp_restore_and_batch(served: Served) -> None:
    async with MCPClient(served.url + "/mcp/") as client:
        batch = await client.call_tool(
            "execute",
            {
                "sql": [
                    "INSERT INTO orders VALUES (200, 'new', 2.0)",
                    "DELETE FROM orders WHERE order_id = 0",
                ]
            },
        )
        assert not batch.is_error, batch.content
        snap = batch.structured_content["snapshot_id"]  # type: ignore[index]
        restored = await client.call_tool(
            "restore_table", {"name": "orders", "snapshot_id": snap - 1}
        )
        assert not restored.is_error, restored.content
        assert restored.structured_content["signals"]["orders"]["rows"] == 20  # type: ignore[index]


def test_cli_restore_and_audit(lake_dir: Path, policy: Path) -> None:
    with lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as w:
        good = _seed(w)
        with w.session("careless") as s:
            s.sql("DELETE FROM orders")
    runner = CliRunner()
    refused = runner.invoke(
        app,
        [
            "restore",
            "orders",
            "--to",
            str(good),
            "--lake",
            str(lake_dir),
            "--policy",
            str(policy),
            "--agent",
            "careless",
        ],
    )
    assert refused.exit_code == 2 and "policy_denied" in refused.output
    done = runner.invoke(
        app,
        [
            "restore",
            "orders",
            "--to",
            str(good),
            "--lake",
            str(lake_dir),
            "--policy",
            str(policy),
            "--agent",
            "ops",
        ],
    )
    assert done.exit_code == 0, done.output
    assert "20 rows" in done.output
    audit = runner.invoke(app, ["audit", "--lake", str(lake_dir), "--json"])
    records = json.loads(audit.stdout)
    assert [r["decision"] for r in records[:2]] == ["restored", "denied"]
