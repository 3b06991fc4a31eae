"""A governed session: one agent's statements, each analysed, checked, run, traced and measured.

The pipeline of one statement, in order: analysis -> governance -> store -> signals -> telemetry.
Telemetry failures are logged and never reach the agent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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
from lakewarden.store import audit
from lakewarden.store.deadline import WATCHDOG
from lakewarden.transaction import Transaction

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
    """One agent's connection to the lake. Use it as a context manager; it is cheap to open.

    Each write is its own atomic, gated commit, unless it runs inside :meth:`transaction`, where
    every statement up to the end of the block commits together, gated as a unit, or not at all.
    """

    def __init__(self, warden: Warden, agent: str) -> None:
        if not agent or not isinstance(agent, str):
            raise ValueError("a session needs an agent name")
        self.warden = warden
        self.agent = agent
        self._cur = warden.engine.cursor()
        self._closed = False
        self._tx: Transaction | None = None
        self._tx_span: trace.Span | None = None

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
            if self._tx is not None:
                self._tx.rollback()
                self._tx = None
            self._closed = True
            self._cur.close()

    # -- statements ------------------------------------------------------------------------

    def sql(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        max_rows: int | None = None,
        traceparent: str | None = None,
        dry_run: bool = False,
    ) -> Result:
        """Run one statement under governance; raise a :class:`LakewardenError` if refused.

        With ``dry_run`` a write runs inside a transaction that is always rolled back: the
        result carries its signals and the gate's violations, and nothing is committed.
        """
        if self._closed:
            raise ExecutionError("the session is closed; open a new one with warden.session()")
        started = time.perf_counter()
        warden = self.warden
        try:
            stmt = analyze(sql)
        except InvalidSQL as exc:
            exc.trace_id = self._failed_span(exc, started, traceparent)
            if self._tx is None:
                self.warden.audit_refused(
                    audit.AuditRecord(
                        agent=self.agent,
                        decision=DECISION_FAILED,
                        operation="UNKNOWN",
                        summary="invalid SQL",
                        statement=sql if isinstance(sql, str) else "",
                        violations=(Violation("invalid_sql", exc.message),),
                        trace_id=exc.trace_id,
                    )
                )
            raise
        span = warden.telemetry.tracer.start_span(
            stmt.summary,
            context=self._context(traceparent),
            kind=SpanKind.CLIENT,
            attributes=self._span_attributes(stmt),
        )
        trace_id = _trace_id(span, traceparent)
        flagged: list[Violation] = []
        try:
            flagged = warden.govern(self.agent, stmt)
            timeout = warden.timeout(self.agent)
            if stmt.kind == "read":
                result = self._read(
                    stmt, params, warden.row_limit(self.agent, max_rows), timeout, trace_id
                )
            elif self._tx is not None:
                if dry_run:
                    raise InvalidSQL("dry_run applies to a whole transaction, not one statement")
                affected = self._tx.run(stmt, params, timeout, _engine_error)
                result = Result(
                    kind=stmt.kind, summary=stmt.summary, trace_id=trace_id, rows_affected=affected
                )
            else:
                result = self._write([stmt], [params], timeout, trace_id, span, dry_run)
            if flagged:
                result = replace(
                    result, violations=result.violations + tuple(v.to_dict() for v in flagged)
                )
        except Exception as exc:
            error = _as_lakewarden_error(exc)
            error.trace_id = trace_id
            self._finish(span, stmt, started, error=error, flagged=flagged)
            if self._tx is None:  # inside a transaction, the transaction's outcome is audited
                self.warden.audit_refused(
                    audit.AuditRecord(
                        agent=self.agent,
                        decision=decision_of(error),
                        operation=stmt.operation,
                        summary=stmt.summary,
                        statement=stmt.text,
                        tables=stmt.tables,
                        violations=tuple(error.violations),
                        trace_id=trace_id,
                    )
                )
            if error is exc:
                raise
            raise error from exc
        self._finish(span, stmt, started, result=result, flagged=flagged)
        return result

    def batch(
        self, statements: Sequence[str], *, traceparent: str | None = None, dry_run: bool = False
    ) -> Result:
        """Run several statements as ONE atomic, gated transaction: all commit, or none."""
        if not statements:
            raise InvalidSQL("an atomic batch needs at least one statement")
        results = []
        with self.transaction(traceparent=traceparent, dry_run=dry_run) as tx:
            for text in statements:
                results.append(self.sql(text))
        return replace(tx.result, statements=tuple(results))

    @contextmanager
    def transaction(
        self, *, traceparent: str | None = None, dry_run: bool = False
    ) -> Iterator[TransactionHandle]:
        """Everything in the block commits together as one snapshot, after the gate, or not at
        all. With ``dry_run`` it is judged and always rolled back."""
        if self._tx is not None:
            raise InvalidSQL("a transaction is already open in this session")
        started = time.perf_counter()
        span = self.warden.telemetry.tracer.start_span(
            "BATCH",
            context=self._context(traceparent),
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "duckdb",
                "db.operation.name": "BATCH",
                "db.namespace": self.warden.engine.location.namespace,
                "gen_ai.agent.name": self.agent,
            },
        )
        handle = TransactionHandle(trace_id=_trace_id(span, traceparent))
        tx = Transaction(self.warden, self._cur, self.agent)
        tx.begin()
        self._tx, self._tx_span = tx, span
        try:
            yield handle
            handle.result = self._conclude(tx, span, handle.trace_id, dry_run)
        except BaseException as exc:
            tx.rollback()
            error = _as_lakewarden_error(exc) if isinstance(exc, Exception) else None
            self._finish_batch(span, tx, started, error=error)
            if error is not None:
                self.warden.audit_refused(
                    audit.AuditRecord(
                        agent=self.agent,
                        decision=decision_of(error),
                        operation="BATCH",
                        summary="BATCH " + " ".join(tx.tables_written),
                        statement="\n".join(s.text for s in tx.statements),
                        tables=tx.tables_written,
                        violations=tuple(error.violations),
                        trace_id=handle.trace_id,
                    )
                )
            raise
        finally:
            self._tx, self._tx_span = None, None
        self._finish_batch(span, tx, started, result=handle.result)

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
        stmts: list[Statement],
        params: list[Sequence[Any] | None],
        timeout: float | None,
        trace_id: str | None,
        span: trace.Span,
        dry_run: bool,
    ) -> Result:
        tx = Transaction(self.warden, self._cur, self.agent)
        tx.begin()
        try:
            affected = [
                tx.run(s, p, timeout, _engine_error) for s, p in zip(stmts, params, strict=True)
            ]
            result = self._conclude(tx, span, trace_id, dry_run)
        except BaseException:
            tx.rollback()
            raise
        total = [a for a in affected if a is not None]
        return replace(result, rows_affected=sum(total) if total else None)

    def _conclude(
        self, tx: Transaction, span: trace.Span, trace_id: str | None, dry_run: bool
    ) -> Result:
        """Gate, then commit (or roll back for a dry run or a blocked write)."""
        kinds = {s.kind for s in tx.statements}
        kind = "ddl" if kinds == {"ddl"} else ("write" if kinds - {"read"} else "read")
        summary = (
            tx.statements[0].summary
            if len(tx.statements) == 1
            else "BATCH "
            + " ".join(dict.fromkeys(t for s in tx.statements for t in s.tables_written))
        )
        verdict = tx.verdict()
        blocked = bool(verdict.violations) and (
            self.warden.policy.effective_mode(self.agent) == "enforce"
        )
        if dry_run:
            tx.rollback()
            return Result(
                kind=kind,
                summary=summary,
                trace_id=trace_id,
                dry_run=True,
                signals={t: s.summary() for t, s in verdict.projected.items()},
                violations=tuple(v.to_dict() for v in verdict.violations),
            )
        if blocked:
            tx.rollback()
            self.warden.record_blocked(self.agent, verdict.violations)
            raise QualityGateFailed(
                f"{summary} was rolled back by the quality gate: "
                + "; ".join(v.detail for v in verdict.violations)
                + ". Nothing was committed.",
                verdict.violations,
            )
        ctx = span.get_span_context()
        span_id = f"{ctx.span_id:016x}" if ctx.is_valid else None
        records = [
            audit.AuditRecord(
                agent=self.agent,
                decision=DECISION_ALLOWED,
                operation=s.operation,
                summary=s.summary,
                statement=s.text,
                tables=s.tables,
                violations=tuple(verdict.violations),
                trace_id=trace_id,
                span_id=span_id,
            )
            for s in tx.statements
        ]
        snapshot_id, updates = tx.commit(summary, trace_id, span_id, records)
        return Result(
            kind=kind,
            summary=summary,
            trace_id=trace_id,
            snapshot_id=snapshot_id,
            signals={name: u.to_dict() for name, u in updates.items()},
            violations=tuple(v.to_dict() for v in verdict.violations),
        )

    def _context(self, traceparent: str | None) -> otel_context.Context | None:
        if self._tx_span is not None:
            return trace.set_span_in_context(self._tx_span)
        return parent_context(traceparent)

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
            _mark(span, decision, error, result, flagged)
            if result is not None and result.kind == "read":
                span.set_attribute("db.response.returned_rows", result.row_count)
            span.end()
            self.warden.record_statement(
                agent=self.agent,
                operation=stmt.operation,
                collection=_collection(stmt),
                decision=decision,
                seconds=time.perf_counter() - started,
                error=error_type(error) if error else None,
                updates=result.signals if result and not result.dry_run else {},
            )
        except Exception:
            log.exception(
                "telemetry failed for %s; the statement itself is unaffected", stmt.summary
            )

    def _finish_batch(
        self,
        span: trace.Span,
        tx: Transaction,
        started: float,
        *,
        result: Result | None = None,
        error: LakewardenError | None = None,
    ) -> None:
        try:
            decision = decision_of(error) if error else DECISION_ALLOWED
            span.set_attribute("lakewarden.tables.written", list(tx.tables_written))
            _mark(span, decision, error, result, None)
            span.end()
            self.warden.record_statement(
                agent=self.agent,
                operation="BATCH",
                collection=None,
                decision=decision,
                seconds=time.perf_counter() - started,
                error=error_type(error) if error else None,
                updates=result.signals if result and not result.dry_run else {},
            )
        except Exception:
            log.exception("telemetry failed for a batch; the batch itself is unaffected")

    def _failed_span(
        self, error: LakewardenError, started: float, traceparent: str | None
    ) -> str | None:
        """A span for a statement never analysed (empty, unparsable, several); its trace id."""
        try:
            span = self.warden.telemetry.tracer.start_span(
                "duckdb",
                context=self._context(traceparent),
                kind=SpanKind.CLIENT,
                attributes={
                    "db.system.name": "duckdb",
                    "db.namespace": self.warden.engine.location.namespace,
                    "gen_ai.agent.name": self.agent,
                },
            )
            _mark(span, DECISION_FAILED, error, None, None)
            span.end()
            trace_id = _trace_id(span, traceparent)
            self.warden.record_statement(
                agent=self.agent,
                operation="UNKNOWN",
                collection=None,
                decision=DECISION_FAILED,
                seconds=time.perf_counter() - started,
                error=error_type(error),
                updates={},
            )
        except Exception:
            log.exception("telemetry failed for an invalid statement")
            return _trace_id_of(traceparent)
        return trace_id


@dataclass
class TransactionHandle:
    """What ``with session.transaction() as tx`` gives: the trace id, then the outcome."""

    trace_id: str | None
    result: Result = field(
        default_factory=lambda: Result(kind="write", summary="BATCH", trace_id=None)
    )


def _mark(
    span: trace.Span,
    decision: str,
    error: LakewardenError | None,
    result: Result | None,
    flagged: list[Violation] | None,
) -> None:
    span.set_attribute("lakewarden.decision", decision)
    violations = list(error.violations) if error else list(flagged or [])
    if result is not None:
        violations += [
            Violation(**v) for v in result.violations if Violation(**v) not in violations
        ]
        if result.kind != "read" and not result.dry_run:
            span.set_attribute("lakewarden.rows.written", _rows_written(result.signals))
        if result.snapshot_id is not None:
            span.set_attribute("lakewarden.snapshot.id", result.snapshot_id)
        if result.dry_run:
            span.set_attribute("lakewarden.dry_run", True)
    for violation in violations:
        span.add_event("lakewarden.violation", {k: str(v) for k, v in violation.to_dict().items()})
    if error is not None:
        span.set_attribute("error.type", error_type(error))
        span.set_status(Status(StatusCode.ERROR, error.message[:256]))


def _rows_written(signals: dict[str, dict[str, Any]]) -> int:
    return sum(
        s.get("rows_inserted", 0) + s.get("rows_deleted", 0) + s.get("rows_updated", 0)
        for s in signals.values()
    )


def _trace_id(span: trace.Span, traceparent: str | None) -> str | None:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else _trace_id_of(traceparent)


def _collection(stmt: Statement) -> str | None:
    if stmt.tables_written:
        return stmt.target
    return stmt.tables_read[0] if len(stmt.tables_read) == 1 else None


def _fetch(cur: duckdb.DuckDBPyConnection, limit: int | None) -> tuple[pa.Table, bool]:
    if limit is None:
        return cur.to_arrow_table(), False
    reader = cur.to_arrow_reader(min(max(limit + 1, 1), 100_000))
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
