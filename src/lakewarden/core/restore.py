"""Restore: make a table equal to its content at an earlier snapshot, as one new commit.

DuckLake has no restore function; a restore is a compensating commit: the table's columns are
brought back to the snapshot's schema, its rows replaced by the rows it had then, all in one
transaction, authored by whoever restored and audited as ``restored``. Only agents the policy
names under ``restore`` may do it. The quality gate does not apply: the target state is, by
definition, one the table was already in.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import duckdb

from lakewarden.errors import ExecutionError, LakewardenError, NotFound, PolicyDenied, Violation
from lakewarden.result import Result
from lakewarden.store import audit, catalog
from lakewarden.store.catalog import ident, table_ref
from lakewarden.telemetry.recorder import Event, new_ids, parent_of
from lakewarden.store.transaction import Transaction

if TYPE_CHECKING:
    from lakewarden.core.warden import Warden

DECISION_RESTORED = "restored"


def restore(
    warden: Warden, table: str, snapshot_id: int, agent: str, traceparent: str | None
) -> Result:
    if not warden.engine.location.is_lake:
        raise ExecutionError(
            "restore needs a DuckLake lake; a plain DuckDB file keeps no snapshots"
        )
    summary = f"RESTORE {table} TO {snapshot_id}"
    parent = parent_of(traceparent)
    trace_id, span_id = new_ids(parent)
    event = Event(
        name=f"RESTORE {table}",
        agent=agent,
        operation="RESTORE",
        trace_id=trace_id,
        span_id=span_id,
        parent=parent,
        start_ns=time.time_ns(),
        collection=table,
        attributes={
            "db.system.name": "duckdb",
            "db.operation.name": "RESTORE",
            "db.collection.name": table,
            "db.query.summary": f"RESTORE {table}",
            "gen_ai.agent.name": agent,
            "lakewarden.restore.snapshot_id": snapshot_id,
            "db.namespace": warden.engine.location.namespace,
        },
    )
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
            tx.shape_changed = _rewrite(tx, table, snapshot_id)
            record = audit.AuditRecord(
                agent=agent,
                decision=DECISION_RESTORED,
                operation="RESTORE",
                summary=summary,
                tables=(table,),
                trace_id=event.trace_hex,
                span_id=event.span_hex,
            )
            new_snapshot, updates = tx.commit(summary, event.trace_hex, event.span_hex, [record])
        except BaseException:
            tx.rollback()
            raise
        finally:
            tx.cur.close()
    except Exception as exc:
        error = (
            exc if isinstance(exc, LakewardenError) else ExecutionError(f"restore failed: {exc}")
        )
        error.trace_id = event.trace_hex
        event.end_ns = time.time_ns()
        event.decision = "denied" if isinstance(error, PolicyDenied) else "failed"
        event.error_type, event.error_message = error.code, error.message
        event.violations = tuple(error.violations)
        warden.recorder.submit(event)
        warden.audit_refused(
            audit.AuditRecord(
                agent=agent,
                decision=event.decision,
                operation="RESTORE",
                summary=summary,
                tables=(table,),
                violations=tuple(error.violations),
                trace_id=event.trace_hex,
            )
        )
        if error is exc:
            raise
        raise error from exc
    signals = {name: u.to_dict() for name, u in updates.items()}
    event.end_ns = time.time_ns()
    event.decision = DECISION_RESTORED
    event.snapshot_id = new_snapshot
    event.rows_written = {
        t: s["rows_inserted"] + s["rows_deleted"] + s["rows_updated"] for t, s in signals.items()
    }
    warden.recorder.submit(event)
    return Result(
        kind="write",
        summary=summary,
        trace_id=event.trace_hex,
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
