"""The span contract (DESIGN.md, Telemetry): what each kind of span is named and carries.

Statement, batch, restore and check spans are described here as :class:`Event` values, the
plain data the background recorder turns into spans and metric points; the orchestration only
says what happened. The decision names are defined here, once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import SpanContext

from lakewarden.analysis import Statement
from lakewarden.errors import LakewardenError, PolicyDenied, QualityGateFailed
from lakewarden.signals.update import TableSignals
from lakewarden.telemetry.recorder import Event, child_of, new_ids, parent_of

ALLOWED = "allowed"
DENIED = "denied"
BLOCKED = "blocked"
FAILED = "failed"
RESTORED = "restored"

DB_SYSTEM = "duckdb"
Parent = SpanContext  # the span a new one is a child of


def decision_of(error: BaseException) -> str:
    if isinstance(error, PolicyDenied):
        return DENIED
    if isinstance(error, QualityGateFailed):
        return BLOCKED
    return FAILED


def error_type(error: BaseException) -> str:
    return error.code if isinstance(error, LakewardenError) else type(error).__qualname__


def _base(agent: str, namespace: str) -> dict[str, Any]:
    return {"db.system.name": DB_SYSTEM, "db.namespace": namespace, "gen_ai.agent.name": agent}


def statement(
    agent: str, namespace: str, traceparent: str | None = None, parent: Parent | None = None
) -> Event:
    """A statement's span, started now: under ``parent``, else the caller's ``traceparent``
    (or current OTel span), else a new trace. Named once the statement is analysed."""
    parent = parent or parent_of(traceparent)
    trace_id, span_id = new_ids(parent)
    return Event(
        name=DB_SYSTEM,
        agent=agent,
        operation="UNKNOWN",
        trace_id=trace_id,
        span_id=span_id,
        parent=parent,
        start_ns=time.time_ns(),
        attributes=_base(agent, namespace),
    )


def child(event: Event) -> Parent:
    """The parent context of the spans under ``event`` (a batch's statements)."""
    return child_of(event.trace_id, event.span_id)


def analysed(event: Event, stmt: Statement, namespace: str) -> None:
    """Name the span after the statement's summary and describe what it touches."""
    event.name, event.operation = stmt.summary, stmt.operation
    event.collection = collection(stmt)
    attrs = _base(event.agent, namespace)
    attrs.update(
        {
            "db.operation.name": stmt.operation,
            "db.query.summary": stmt.summary,
            "db.query.text": stmt.query_text,
            "lakewarden.tables.read": list(stmt.tables_read),
            "lakewarden.tables.written": list(stmt.tables_written),
        }
    )
    if event.collection:
        attrs["db.collection.name"] = event.collection
    event.attributes = attrs


def batch(event: Event, tables_written: tuple[str, ...], namespace: str) -> None:
    event.name = event.operation = "BATCH"
    attrs = _base(event.agent, namespace)
    attrs.update({"db.operation.name": "BATCH", "lakewarden.tables.written": list(tables_written)})
    event.attributes = attrs


def restore(
    agent: str, namespace: str, table: str, snapshot_id: int, traceparent: str | None
) -> Event:
    event = statement(agent, namespace, traceparent)
    event.name, event.operation, event.collection = f"RESTORE {table}", "RESTORE", table
    attrs = _base(agent, namespace)
    attrs.update(
        {
            "db.operation.name": "RESTORE",
            "db.collection.name": table,
            "db.query.summary": f"RESTORE {table}",
            "lakewarden.restore.snapshot_id": snapshot_id,
        }
    )
    event.attributes = attrs
    return event


def check(table: str, check_name: str, passing: bool, detail: str, at: float) -> Event:
    """A check that changed state, as a zero-length ``CHECK <table>`` span of its own trace."""
    trace_id, span_id = new_ids(None)
    stamp = int(at * 1e9)
    return Event(
        name=f"CHECK {table}",
        agent="lakewarden",
        operation="CHECK",
        trace_id=trace_id,
        span_id=span_id,
        parent=None,
        start_ns=stamp,
        end_ns=stamp,
        collection=table,
        decision="",
        record_metrics=False,
        attributes={
            "db.collection.name": table,
            "lakewarden.check.name": check_name,
            "lakewarden.check.passing": passing,
            "lakewarden.check.detail": detail,
        },
        error_type=None if passing else "check_failed",
        error_message=None if passing else f"{check_name}: {detail}",
    )


def refused(event: Event, error: BaseException) -> None:
    """End a span whose statement committed nothing; a lakewarden error learns its trace id
    (any other exception is a failure of lakewarden itself, recorded by its type)."""
    event.end_ns = time.time_ns()
    event.decision = decision_of(error)
    event.error_type = error_type(error)
    if isinstance(error, LakewardenError):
        error.trace_id = event.trace_hex
        event.error_message = error.message
        event.violations = tuple(error.violations)
    else:
        event.error_message = f"internal error: {type(error).__name__}"


def committed(
    event: Event,
    snapshot_id: int | None,
    signals: Mapping[str, TableSignals],
    decision: str = ALLOWED,
) -> None:
    event.decision = decision
    event.snapshot_id = snapshot_id
    event.rows_written = {t: s.rows_written for t, s in signals.items()}


def ended(event: Event) -> Event:
    event.end_ns = time.time_ns()
    return event


def collection(stmt: Statement) -> str | None:
    """``db.collection.name``: the single target written, else the single table read."""
    if stmt.tables_written:
        return stmt.target
    return stmt.tables_read[0] if len(stmt.tables_read) == 1 else None
