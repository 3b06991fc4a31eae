"""A governed session: one agent's statements, each analysed, checked, run, traced and measured.

The pipeline of one statement, in order: analysis -> governance -> store -> signals -> telemetry.
Telemetry failures are logged and never reach the agent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lakewarden.analysis import Statement, analyze
from lakewarden.errors import (
    ExecutionError,
    InvalidSQL,
    LakewardenError,
    PolicyDenied,
    QualityGateFailed,
    StatementTimeout,
    Violation,
)
from lakewarden.result import Result
from lakewarden.store import catalog
from lakewarden.store.deadline import WATCHDOG
from lakewarden.store.engine import LAKE_ALIAS
from lakewarden.tracker import TableUpdate

if TYPE_CHECKING:
    from lakewarden.warden import Warden

log = logging.getLogger(__name__)
_PROPAGATOR = TraceContextTextMapPropagator()

DECISION_ALLOWED = "allowed"
DECISION_DENIED = "denied"
DECISION_BLOCKED = "blocked"
DECISION_FAILED = "failed"


def decision_of(error: BaseException) -> str:
    if isinstance(error, PolicyDenied):
        return DECISION_DENIED
    if isinstance(error, QualityGateFailed):
        return DECISION_BLOCKED
    return DECISION_FAILED


def error_type(error: BaseException) -> str:
    return error.code if isinstance(error, LakewardenError) else type(error).__qualname__


def parent_context(traceparent: str | None) -> otel_context.Context | None:
    """The caller's trace context from a W3C ``traceparent`` (None: use the current context)."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


class Session:
    """One agent's connection to the lake. Use it as a context manager; it is cheap to open."""

    def __init__(self, warden: Warden, agent: str) -> None:
        if not agent or not isinstance(agent, str):
            raise ValueError("a session needs an agent name")
        self.warden = warden
        self.agent = agent
        self._cur = warden.engine.cursor()
        self._closed = False

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._cur.close()

    def sql(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        max_rows: int | None = None,
        traceparent: str | None = None,
    ) -> Result:
        """Run one statement under governance; raise a :class:`LakewardenError` if refused."""
        if self._closed:
            raise ExecutionError("the session is closed; open a new one with warden.session()")
        started = time.perf_counter()
        warden = self.warden
        stmt: Statement | None = None
        try:
            stmt = analyze(sql)
        except InvalidSQL as exc:
            self._failed_span(exc, sql, started, traceparent)
            raise
        span = warden.telemetry.tracer.start_span(
            stmt.summary,
            context=parent_context(traceparent),
            kind=SpanKind.CLIENT,
            attributes=self._span_attributes(stmt),
        )
        ctx = span.get_span_context()
        trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else _trace_id_of(traceparent)
        try:
            flagged = warden.govern(self.agent, stmt)
            limit = warden.row_limit(self.agent, max_rows)
            timeout = warden.timeout(self.agent)
            if stmt.kind == "read":
                result = self._read(stmt, params, limit, timeout, trace_id)
            else:
                result = self._write(stmt, params, timeout, trace_id, span)
            if flagged:
                result = _with_violations(result, flagged)
        except Exception as exc:
            error = _as_lakewarden_error(exc)
            self._finish(span, stmt, started, error=error)
            if error is exc:
                raise
            raise error from exc
        self._finish(span, stmt, started, result=result, flagged=flagged)
        return result

    # -- execution -------------------------------------------------------------------------

    def _read(
        self,
        stmt: Statement,
        params: Sequence[Any] | None,
        limit: int | None,
        timeout: float | None,
        trace_id: str | None,
    ) -> Result:
        cur = self._cur
        with WATCHDOG.guard(cur, timeout) as deadline:
            try:
                cur.execute(stmt.text, params)
                table, truncated = _fetch(cur, limit)
            except duckdb.Error as exc:
                raise _engine_error(exc, deadline.expired, timeout) from exc
        return Result(
            kind="read", summary=stmt.summary, trace_id=trace_id, table=table, truncated=truncated
        )

    def _write(
        self,
        stmt: Statement,
        params: Sequence[Any] | None,
        timeout: float | None,
        trace_id: str | None,
        span: trace.Span,
    ) -> Result:
        warden = self.warden
        cur = self._cur
        is_lake = warden.engine.location.is_lake
        with warden.engine.write_lock:
            cur.begin()
            try:
                with WATCHDOG.guard(cur, timeout) as deadline:
                    try:
                        cur.execute(stmt.text, params)
                        row = cur.fetchone() if cur.description else None
                    except duckdb.Error as exc:
                        raise _engine_error(exc, deadline.expired, timeout) from exc
                affected = int(row[0]) if row and stmt.kind == "write" else None
                if is_lake:
                    ctx = span.get_span_context()
                    extra = {
                        "trace_id": trace_id,
                        "span_id": f"{ctx.span_id:016x}" if ctx.is_valid else None,
                    }
                    cur.execute(
                        f"CALL {LAKE_ALIAS}.set_commit_message(?, ?, extra_info => ?)",
                        [self.agent, stmt.summary, json.dumps(extra)],
                    )
                cur.commit()
            except BaseException:
                _rollback(cur)
                raise
            snapshot_id = catalog.last_committed_snapshot(cur) if is_lake else None
            known = warden.tracker.snapshot_id
            if snapshot_id is not None and known is not None and snapshot_id <= known:
                # DuckLake made no snapshot (the write changed nothing): this id is an older
                # commit of this cursor, already applied; never claim it for this write.
                snapshot_id = None
            updates = warden.tracker.record(
                snapshot_id, stmt.tables_written, self.agent, shape_changed=stmt.kind == "ddl"
            )
        return Result(
            kind=stmt.kind,
            summary=stmt.summary,
            trace_id=trace_id,
            rows_affected=affected,
            snapshot_id=snapshot_id,
            signals={name: u.to_dict() for name, u in updates.items()},
        )

    # -- telemetry ---------------------------------------------------------------------------

    def _span_attributes(self, stmt: Statement) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "db.system.name": "duckdb",
            "db.namespace": self.warden.engine.location.namespace,
            "db.operation.name": stmt.operation,
            "db.query.summary": stmt.summary,
            "db.query.text": stmt.query_text,
            "gen_ai.agent.name": self.agent,
            "lakewarden.tables.read": list(stmt.tables_read),
            "lakewarden.tables.written": list(stmt.tables_written),
        }
        collection = _collection(stmt)
        if collection:
            attrs["db.collection.name"] = collection
        return attrs

    def _finish(
        self,
        span: trace.Span,
        stmt: Statement,
        started: float,
        *,
        result: Result | None = None,
        error: LakewardenError | None = None,
        flagged: list[Violation] | None = None,
    ) -> None:
        try:
            decision = decision_of(error) if error else DECISION_ALLOWED
            span.set_attribute("lakewarden.decision", decision)
            for violation in error.violations if error else flagged or []:
                span.add_event(
                    "lakewarden.violation", {k: str(v) for k, v in violation.to_dict().items()}
                )
            rows_written = 0
            if result is not None:
                if result.kind == "read":
                    span.set_attribute("db.response.returned_rows", result.row_count)
                rows_written = sum(
                    s["rows_inserted"] + s["rows_deleted"] + s["rows_updated"]
                    for s in result.signals.values()
                )
                if result.kind == "write":
                    span.set_attribute("lakewarden.rows.written", rows_written)
                if result.snapshot_id is not None:
                    span.set_attribute("lakewarden.snapshot.id", result.snapshot_id)
            if error is not None:
                span.set_attribute("error.type", error_type(error))
                span.set_status(Status(StatusCode.ERROR, error.message[:256]))
            span.end()
            self.warden.record_statement(
                agent=self.agent,
                stmt=stmt,
                decision=decision,
                seconds=time.perf_counter() - started,
                error=error_type(error) if error else None,
                updates=result.signals if result else {},
            )
        except Exception:
            log.exception(
                "telemetry failed for %s; the statement itself is unaffected", stmt.summary
            )

    def _failed_span(
        self, error: LakewardenError, sql: str, started: float, traceparent: str | None
    ) -> None:
        """A span for a statement that never got analysed (empty, unparsable, several)."""
        try:
            span = self.warden.telemetry.tracer.start_span(
                "duckdb",
                context=parent_context(traceparent),
                kind=SpanKind.CLIENT,
                attributes={
                    "db.system.name": "duckdb",
                    "db.namespace": self.warden.engine.location.namespace,
                    "gen_ai.agent.name": self.agent,
                    "lakewarden.decision": DECISION_FAILED,
                    "error.type": error_type(error),
                },
            )
            span.set_status(Status(StatusCode.ERROR, error.message[:256]))
            span.end()
            self.warden.record_statement(
                agent=self.agent,
                stmt=None,
                decision=DECISION_FAILED,
                seconds=time.perf_counter() - started,
                error=error_type(error),
                updates={},
            )
        except Exception:
            log.exception("telemetry failed for an invalid statement")


def _collection(stmt: Statement) -> str | None:
    if stmt.tables_written:
        return stmt.target
    return stmt.tables_read[0] if len(stmt.tables_read) == 1 else None


def _fetch(cur: duckdb.DuckDBPyConnection, limit: int | None) -> tuple[pa.Table, bool]:
    if limit is None:
        return cur.to_arrow_table(), False
    reader = cur.fetch_record_batch(min(max(limit + 1, 1), 100_000))
    batches: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        batches.append(batch)
        count += batch.num_rows
        if count > limit:
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    if table.num_rows > limit:
        return table.slice(0, limit), True
    return table, False


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    # The engine may already have aborted the transaction: then there is nothing to roll back.
    with contextlib.suppress(duckdb.Error):
        cur.rollback()


def _engine_error(exc: duckdb.Error, expired: bool, timeout: float | None) -> LakewardenError:
    if expired or isinstance(exc, duckdb.InterruptException):
        return StatementTimeout(
            f"the statement ran longer than its limit of {timeout:g} s and was stopped; "
            "nothing was committed",
            [Violation("timeout", "statement time limit", limit=timeout)],
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, duckdb.PermissionException):
        return PolicyDenied(
            f"the engine refused file access: {first}",
            [Violation("engine_hardening", first)],
        )
    if isinstance(exc, duckdb.ParserException):
        return InvalidSQL(f"the statement does not parse: {first}")
    rule = _snake(type(exc).__name__.replace("Exception", "_error"))
    return ExecutionError(f"{first}; nothing was committed", [Violation(rule, first)])


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out.replace("__", "_")


def _as_lakewarden_error(exc: BaseException) -> LakewardenError:
    if isinstance(exc, LakewardenError):
        return exc
    if isinstance(exc, duckdb.Error):
        return _engine_error(exc, False, None)
    return ExecutionError(f"internal error: {type(exc).__name__}: {exc}")


def _trace_id_of(traceparent: str | None) -> str | None:
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) >= 2 and len(parts[1]) == 32:
            return parts[1]
    return None


def _with_violations(result: Result, flagged: list[Violation]) -> Result:
    from dataclasses import replace

    return replace(result, violations=tuple(v.to_dict() for v in flagged))


__all__ = ["Session", "TableUpdate"]
