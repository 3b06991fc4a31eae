"""Restore: make a table equal to its content at an earlier snapshot, as one new commit.

DuckLake has no restore function; a restore is a compensating commit (the SQL is
:mod:`lakewarden.store.restore`): the table's columns brought back to the snapshot's schema and
its rows replaced by the rows it had then, in one transaction that ends like every write
(:func:`lakewarden.core.commit.commit`), authored by whoever restored and audited as
``restored``. Only agents the policy names under ``restore`` may do it. The quality gate does
not apply: the target state is, by definition, one the table was already in.
"""

from __future__ import annotations

from lakewarden.core.commit import commit
from lakewarden.core.stages import Stages
from lakewarden.errors import ExecutionError, LakewardenError
from lakewarden.result import Result
from lakewarden.store import restore as rewrite
from lakewarden.store.audit import AuditRecord
from lakewarden.store.execute import ENGINE_ERRORS
from lakewarden.store.transaction import Transaction
from lakewarden.telemetry import spans
from lakewarden.telemetry.recorder import Event


def restore(
    stages: Stages, table: str, snapshot_id: int, agent: str, traceparent: str | None
) -> Result:
    engine = stages.engine
    if not engine.location.is_lake:
        raise ExecutionError(
            "restore needs a DuckLake lake; a plain DuckDB file keeps no snapshots"
        )
    summary = f"RESTORE {table} TO {snapshot_id}"
    event = spans.restore(agent, stages.namespace, table, snapshot_id, traceparent)
    try:
        stages.grants.require_restore(agent, table)
        cur = engine.cursor()
        try:
            with Transaction.on(engine, cur) as tx:
                rewrite.check_target(cur, table, snapshot_id)
                rewrite.rewrite(tx, table, snapshot_id)
                record = AuditRecord(
                    agent=agent,
                    decision=spans.RESTORED,
                    operation="RESTORE",
                    summary=summary,
                    tables=(table,),
                    trace_id=event.trace_hex,
                    span_id=event.span_hex,
                )
                new_snapshot, signals = commit(
                    stages,
                    tx,
                    event,
                    agent=agent,
                    summary=summary,
                    records=[record],
                    decision=spans.RESTORED,
                )
        finally:
            cur.close()
    except Exception as exc:
        error: Exception = exc
        if isinstance(exc, ENGINE_ERRORS) and not isinstance(exc, LakewardenError):
            error = ExecutionError(f"restore failed: {exc}")
        # Anything else that is not a lakewarden error is a bug: recorded, then reported by
        # the intake as an internal error.
        _refused(stages, event, error, agent, table, summary)
        if error is exc:
            raise
        raise error from exc
    stages.recorder.submit(spans.ended(event))
    return Result(
        kind="write",
        summary=summary,
        trace_id=event.trace_hex,
        snapshot_id=new_snapshot,
        signals=signals,
    )


def _refused(
    stages: Stages,
    event: Event,
    error: Exception,
    agent: str,
    table: str,
    summary: str,
) -> None:
    spans.refused(event, error)
    stages.recorder.submit(event)
    stages.audit.refused(
        AuditRecord(
            agent=agent,
            decision=event.decision,
            operation="RESTORE",
            summary=summary,
            tables=(table,),
            violations=event.violations,
            trace_id=event.trace_hex,
        )
    )
