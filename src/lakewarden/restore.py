"""Restore: make a table equal to its content at an earlier snapshot, as one new commit.

DuckLake has no restore function; a restore is a compensating commit: the table's columns are
brought back to the snapshot's schema, its rows replaced by the rows it had then, all in one
transaction, authored by whoever restored and audited as ``restored``. Only agents the policy
names under ``restore`` may do it. The quality gate does not apply: the target state is, by
definition, one the table was already in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
from opentelemetry.trace import SpanKind, Status, StatusCode

from lakewarden.errors import ExecutionError, NotFound, PolicyDenied, Violation
from lakewarden.result import Result
from lakewarden.session import parent_context
from lakewarden.store import audit, catalog
from lakewarden.store.catalog import ident, table_ref
from lakewarden.transaction import Transaction

if TYPE_CHECKING:
    from lakewarden.warden import Warden

DECISION_RESTORED = "restored"


def restore(
    warden: Warden, table: str, snapshot_id: int, agent: str, traceparent: str | None
) -> Result:
    if not warden.engine.location.is_lake:
        raise ExecutionError(
            "restore needs a DuckLake lake: a plain DuckDB file keeps no snapshots"
        )
    summary = f"RESTORE {table}"
    span = warden.telemetry.tracer.start_span(
        summary,
        context=parent_context(traceparent),
        kind=SpanKind.CLIENT,
        attributes={
            "db.system.name": "duckdb",
            "db.operation.name": "RESTORE",
            "db.collection.name": table,
            "db.query.summary": summary,
            "gen_ai.agent.name": agent,
            "lakewarden.restore.snapshot_id": snapshot_id,
            "db.namespace": warden.engine.location.namespace,
        },
    )
    ctx = span.get_span_context()
    trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else None
    try:
        if not warden.policy.can_restore(agent):
            raise PolicyDenied(
                f"agent {agent!r} may not restore tables; the policy's restore list names who may",
                [Violation("restore", f"{agent} is not allowed to restore", table=table)],
            )
        tx = Transaction(warden, warden.engine.cursor(), agent)
        tx.begin()
        try:
            _check_target(tx.cur, table, snapshot_id)
            reshaped = _rewrite(tx, table, snapshot_id)
            tx.shape_changed = reshaped
            span_id = f"{ctx.span_id:016x}" if ctx.is_valid else None
            record = audit.AuditRecord(
                agent=agent,
                decision=DECISION_RESTORED,
                operation="RESTORE",
                summary=f"{summary} TO {snapshot_id}",
                tables=(table,),
                trace_id=trace_id,
                span_id=span_id,
            )
            new_snapshot, updates = tx.commit(
                f"{summary} TO {snapshot_id}", trace_id, span_id, [record]
            )
        except BaseException:
            tx.rollback()
            raise
        finally:
            tx.cur.close()
    except Exception as exc:
        error = (
            exc
            if isinstance(exc, (PolicyDenied, NotFound, ExecutionError))
            else ExecutionError(f"restore failed: {exc}")
        )
        span.set_attribute(
            "lakewarden.decision", "denied" if isinstance(exc, PolicyDenied) else "failed"
        )
        span.set_attribute("error.type", getattr(error, "code", type(exc).__name__))
        span.set_status(Status(StatusCode.ERROR, str(error)[:256]))
        span.end()
        warden.audit_refused(
            audit.AuditRecord(
                agent=agent,
                decision="denied" if isinstance(exc, PolicyDenied) else "failed",
                operation="RESTORE",
                summary=f"{summary} TO {snapshot_id}",
                tables=(table,),
                violations=tuple(getattr(error, "violations", ())),
                trace_id=trace_id,
            )
        )
        if error is exc:
            raise
        raise error from exc
    span.set_attribute("lakewarden.decision", DECISION_RESTORED)
    if new_snapshot is not None:
        span.set_attribute("lakewarden.snapshot.id", new_snapshot)
    span.end()
    signals = {name: u.to_dict() for name, u in updates.items()}
    warden.record_statement(
        agent=agent,
        operation="RESTORE",
        collection=table,
        decision=DECISION_RESTORED,
        seconds=0.0,
        error=None,
        updates=signals,
    )
    return Result(
        kind="write",
        summary=f"{summary} TO {snapshot_id}",
        trace_id=trace_id,
        snapshot_id=new_snapshot,
        signals=signals,
    )


def _check_target(cur: duckdb.DuckDBPyConnection, table: str, snapshot_id: int) -> None:
    if snapshot_id < 0 or snapshot_id > catalog.current_snapshot(cur):
        raise NotFound(f"snapshot {snapshot_id} does not exist; see `lakewarden snapshots`")
    try:
        cur.execute(f"SELECT 1 FROM {table_ref(table)} AT (VERSION => {snapshot_id}) LIMIT 0")
    except duckdb.Error as exc:
        raise NotFound(f"table {table!r} did not exist at snapshot {snapshot_id}: {exc}") from exc
    if table not in catalog.schemas(cur, "lake"):
        raise NotFound(
            f"table {table!r} does not exist now; restore only replaces a table's "
            "content (re-create it first)"
        )


def _rewrite(tx: Transaction, table: str, version: int) -> bool:
    """Bring schema and rows back to ``version``; True when the schema had to change."""
    cur, ref = tx.cur, table_ref(table)
    then = dict(
        (r[0], r[1])
        for r in cur.execute(f"DESCRIBE SELECT * FROM {ref} AT (VERSION => {version})").fetchall()
    )
    now = catalog.schemas(cur, "lake")[table]
    tx.register(table)
    ddl = [f"ALTER TABLE {ref} DROP COLUMN {ident(c)}" for c in now if c not in then]
    ddl += [f"ALTER TABLE {ref} ADD COLUMN {ident(c)} {t}" for c, t in then.items() if c not in now]
    ddl += [
        f"ALTER TABLE {ref} ALTER {ident(c)} TYPE {t}"
        for c, t in then.items()
        if c in now and now[c] != t
    ]
    columns = ", ".join(ident(c) for c in then)
    # Keep the old rows aside first (measured with duckdb 1.5.5 and DuckLake): inside the
    # transaction, a time-travel scan sees the transaction's own deletes, and it resolves
    # columns against the current schema, so a column dropped and added back has no past.
    cur.execute(
        f"CREATE OR REPLACE TEMP TABLE {_STAGE} AS "
        f"SELECT {columns} FROM {ref} AT (VERSION => {version})"
    )
    for statement in ddl:
        cur.execute(statement)
    cur.execute(f"DELETE FROM {ref}")
    cur.execute(f"INSERT INTO {ref} ({columns}) SELECT {columns} FROM {_STAGE}")
    cur.execute(f"DROP TABLE {_STAGE}")
    return bool(ddl)


_STAGE = "temp.main.lakewarden_restore"
