"""A governed session: one agent's statements, each analysed, checked, run, traced and measured.

The pipeline of one statement, in order: analysis -> governance -> store -> signals -> telemetry.
Telemetry is handed to a background recorder as plain data: it never slows an agent down and its
failures never reach one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from opentelemetry.trace import SpanContext

from lakewarden.analysis import Statement, analyze
from lakewarden.errors import (
    ExecutionError,
    InvalidRequest,
    InvalidSQL,
    LakewardenError,
    PolicyDenied,
    QualityGateFailed,
    StatementTimeout,
    TooLarge,
    Violation,
)
from lakewarden.result import Result
from lakewarden.store import audit
from lakewarden.store.deadline import WATCHDOG
from lakewarden.telemetry.recorder import Event, child_of, new_ids, parent_of
from lakewarden.store.transaction import Transaction

if TYPE_CHECKING:
    from lakewarden.core.warden import Warden

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
        self._tx_span: SpanContext | None = None
        self._batch_started: float | None = None  # an atomic batch spends one time budget
        self._namespace = warden.engine.location.namespace

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

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
        expect: str | None = None,
    ) -> Result:
        """Run one statement under governance; raise a :class:`LakewardenError` if refused.

        With ``dry_run`` a write runs inside a transaction that is always rolled back: the
        result carries its signals and the gate's violations, and nothing is committed.
        ``expect`` ("read" or "write") refuses a statement of the other kind, as an intake
        with one door for reads and one for writes needs (MCP's ``query`` and ``execute``).
        """
        if self._closed:
            raise ExecutionError("the session is closed; open a new one with warden.session()")
        # One deadline for the whole statement: analysis and governance spend from the same
        # budget as execution and fetching, so a slow analysis cannot buy more engine time.
        started = self._batch_started or time.monotonic()
        event = self._event(traceparent)
        warden = self.warden
        try:
            stmt = analyze(sql, warden.settings.max_statement_chars)
        except InvalidSQL as exc:
            self._refused(event, exc, None, sql if isinstance(sql, str) else "")
            raise
        event.name, event.operation = stmt.summary, stmt.operation
        if expect is not None and (stmt.kind == "read") != (expect == "read"):
            error = InvalidRequest(
                f"this call runs {expect} statements, not {stmt.kind} statements",
                [Violation("wrong_tool", f"a {stmt.kind} statement where a {expect} was expected")],
            )
            self._refused(event, error, stmt, stmt.text)
            raise error
        event.collection = _collection(stmt)
        event.attributes = self._attributes(stmt)
        flagged: list[Violation] = []
        try:
            # Inside a transaction that changed the catalog, plans differ from the committed
            # catalog's: such verdicts are neither taken from nor put into the cache.
            shape_changed = self._tx is not None and self._tx.shape_changed
            limit = warden.timeout(self.agent)
            # Planning is part of the statement's time: a statement built to be slow to plan
            # is stopped like one slow to run, from the same budget.
            with WATCHDOG.guard(self._cur, _remaining(limit, started)) as deadline:
                try:
                    flagged = warden.govern(
                        self.agent, stmt, self._cur, cacheable=not shape_changed
                    )
                except duckdb.Error as exc:
                    raise _engine_error(exc, deadline.expired, limit) from exc
            budget = _remaining(limit, started)

            def engine_error(exc: Exception, expired: bool, _budget: float | None) -> Exception:
                return _engine_error(exc, expired, limit)

            if stmt.kind == "read":
                result = self._read(
                    stmt,
                    params,
                    warden.row_limit(self.agent, max_rows),
                    budget,
                    limit,
                    event.trace_hex,
                )
                event.returned_rows = result.row_count
            elif self._tx is not None:
                if dry_run:
                    raise InvalidSQL("dry_run applies to a whole transaction, not one statement")
                affected = self._tx.run(stmt, params, budget, engine_error)
                result = Result(
                    kind=stmt.kind,
                    summary=stmt.summary,
                    trace_id=event.trace_hex,
                    rows_affected=affected,
                )
            else:
                result = self._write(stmt, params, budget, engine_error, event, dry_run)
            if flagged:
                result = replace(
                    result, violations=result.violations + tuple(v.to_dict() for v in flagged)
                )
        except Exception as exc:
            error = _as_lakewarden_error(exc)
            self._refused(event, error, stmt, stmt.text)
            if error is exc:
                raise
            raise error from exc
        event.violations = tuple(flagged) + tuple(
            Violation(**v) for v in result.violations if Violation(**v) not in flagged
        )
        self._done(event, result)
        return result

    def batch(
        self, statements: Sequence[str], *, traceparent: str | None = None, dry_run: bool = False
    ) -> Result:
        """Run several statements as ONE atomic, gated transaction: all commit, or none."""
        if not statements:
            raise InvalidSQL("an atomic batch needs at least one statement")
        results = []
        self._batch_started = time.monotonic()
        try:
            with self.transaction(traceparent=traceparent, dry_run=dry_run) as tx:
                for text in statements:
                    results.append(self.sql(text))
        finally:
            self._batch_started = None
        return replace(tx.result, statements=tuple(results))

    @contextmanager
    def transaction(
        self, *, traceparent: str | None = None, dry_run: bool = False
    ) -> Iterator[TransactionHandle]:
        """Everything in the block commits together as one snapshot, after the gate, or not at
        all. With ``dry_run`` it is judged and always rolled back. Its statements' spans are
        children of one ``BATCH`` span."""
        if self._tx is not None:
            raise InvalidSQL("a transaction is already open in this session")
        event = self._event(traceparent)
        event.name = event.operation = "BATCH"
        handle = TransactionHandle(trace_id=event.trace_hex)
        tx = Transaction(self.warden, self._cur, self.agent)
        tx.begin()
        self._tx, self._tx_span = tx, child_of(event.trace_id, event.span_id)
        try:
            yield handle
            handle.result = self._conclude(tx, event, dry_run)
        except BaseException as exc:
            tx.rollback()
            if isinstance(exc, Exception):
                event.attributes = self._batch_attributes(tx)
                error = _as_lakewarden_error(exc)
                self._refused(
                    event,
                    error,
                    None,
                    "\n".join(s.text for s in tx.statements),
                    summary="BATCH " + " ".join(tx.tables_written),
                    tables=tx.tables_written,
                )
            raise
        finally:
            self._tx, self._tx_span = None, None
        event.attributes = self._batch_attributes(tx)
        self._done(event, handle.result)

    # -- execution -------------------------------------------------------------------------

    def _read(
        self,
        stmt: Statement,
        params: Sequence[Any] | None,
        limit: int | None,
        budget: float | None,
        timeout: float | None,
        trace_id: str,
    ) -> Result:
        cur = self._cur
        # Second wall: an agent that may not write reads inside a transaction that is always
        # rolled back, so a statement that got past authorization still cannot commit a change
        # to the lake (DuckDB has no read-only connection to a database attached read-write, and
        # the catalog file cannot be attached a second time read-only in the same process).
        contained = self._tx is None and self.warden.read_only(self.agent)
        try:
            with WATCHDOG.guard(cur, budget) as deadline:
                try:
                    if contained:
                        cur.begin()
                    cur.execute(stmt.text, params)
                    table, truncated = _fetch(cur, limit, self.warden.settings.max_result_bytes)
                except (duckdb.Error, OSError, MemoryError, pa.ArrowException) as exc:
                    # An interrupt that lands while Arrow batches are being fetched surfaces from
                    # pyarrow as an OSError, not as a duckdb error: the deadline decides what it
                    # was.
                    raise _engine_error(exc, deadline.expired, timeout) from exc
        finally:
            if contained:
                with contextlib.suppress(duckdb.Error):  # the engine may have aborted it
                    cur.rollback()
        return Result(
            kind="read", summary=stmt.summary, trace_id=trace_id, table=table, truncated=truncated
        )

    def _write(
        self,
        stmt: Statement,
        params: Sequence[Any] | None,
        budget: float | None,
        on_error: Any,
        event: Event,
        dry_run: bool,
    ) -> Result:
        tx = Transaction(self.warden, self._cur, self.agent)
        tx.begin()
        try:
            affected = tx.run(stmt, params, budget, on_error)
            result = self._conclude(tx, event, dry_run)
        except BaseException:
            tx.rollback()
            raise
        return replace(result, rows_affected=affected)

    def _conclude(self, tx: Transaction, event: Event, dry_run: bool) -> Result:
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
        if dry_run:
            tx.rollback()
            event.dry_run = True
            return Result(
                kind=kind,
                summary=summary,
                trace_id=event.trace_hex,
                dry_run=True,
                signals={t: s.summary() for t, s in verdict.projected.items()},
                violations=tuple(v.to_dict() for v in verdict.violations),
            )
        if verdict.violations and self.warden.policy.effective_mode(self.agent) == "enforce":
            tx.rollback()
            raise QualityGateFailed(
                f"{summary} was rolled back by the quality gate: "
                + "; ".join(v.detail for v in verdict.violations)
                + ". Nothing was committed.",
                verdict.violations,
            )
        records = [
            audit.AuditRecord(
                agent=self.agent,
                decision=DECISION_ALLOWED,
                operation=s.operation,
                summary=s.summary,
                statement=s.text,
                tables=s.tables,
                violations=tuple(verdict.violations),
                trace_id=event.trace_hex,
                span_id=event.span_hex,
            )
            for s in tx.statements
        ]
        snapshot_id, updates = tx.commit(summary, event.trace_hex, event.span_hex, records)
        if tx.shape_changed:
            self.warden.catalog_changed()
        signals = {name: u.to_dict() for name, u in updates.items()}
        event.snapshot_id = snapshot_id
        event.rows_written = {
            t: s["rows_inserted"] + s["rows_deleted"] + s["rows_updated"]
            for t, s in signals.items()
        }
        return Result(
            kind=kind,
            summary=summary,
            trace_id=event.trace_hex,
            snapshot_id=snapshot_id,
            signals=signals,
            violations=tuple(v.to_dict() for v in verdict.violations),
        )

    # -- telemetry and audit -----------------------------------------------------------------

    def _event(self, traceparent: str | None) -> Event:
        parent = self._tx_span or parent_of(traceparent)
        trace_id, span_id = new_ids(parent)
        return Event(
            name="duckdb",
            agent=self.agent,
            operation="UNKNOWN",
            trace_id=trace_id,
            span_id=span_id,
            parent=parent,
            start_ns=time.time_ns(),
            attributes=self._base_attributes(),
        )

    def _base_attributes(self) -> dict[str, Any]:
        return {
            "db.system.name": "duckdb",
            "db.namespace": self._namespace,
            "gen_ai.agent.name": self.agent,
        }

    def _attributes(self, stmt: Statement) -> dict[str, Any]:
        attrs = self._base_attributes()
        attrs.update(
            {
                "db.operation.name": stmt.operation,
                "db.query.summary": stmt.summary,
                "db.query.text": stmt.query_text,
                "lakewarden.tables.read": list(stmt.tables_read),
                "lakewarden.tables.written": list(stmt.tables_written),
            }
        )
        collection = _collection(stmt)
        if collection:
            attrs["db.collection.name"] = collection
        return attrs

    def _batch_attributes(self, tx: Transaction) -> dict[str, Any]:
        attrs = self._base_attributes()
        attrs.update(
            {"db.operation.name": "BATCH", "lakewarden.tables.written": list(tx.tables_written)}
        )
        return attrs

    def _done(self, event: Event, result: Result) -> None:
        event.end_ns = time.time_ns()
        self.warden.recorder.submit(event)

    def _refused(
        self,
        event: Event,
        error: LakewardenError,
        stmt: Statement | None,
        text: str,
        *,
        summary: str | None = None,
        tables: tuple[str, ...] = (),
    ) -> None:
        """Trace, count and audit a statement that committed nothing."""
        error.trace_id = event.trace_hex
        event.end_ns = time.time_ns()
        event.decision = decision_of(error)
        event.error_type = error_type(error)
        event.error_message = error.message
        event.violations = tuple(error.violations)
        self.warden.recorder.submit(event)
        if self._tx is not None and stmt is not None:
            return  # inside a transaction, the transaction's outcome is audited
        self.warden.audit_refused(
            audit.AuditRecord(
                agent=self.agent,
                decision=event.decision,
                operation=stmt.operation if stmt else event.operation,
                summary=summary or (stmt.summary if stmt else "invalid SQL"),
                statement=text,
                tables=stmt.tables if stmt else tables,
                violations=tuple(error.violations),
                trace_id=event.trace_hex,
            )
        )


@dataclass
class TransactionHandle:
    """What ``with session.transaction() as tx`` gives: the trace id, then the outcome."""

    trace_id: str | None
    result: Result = field(
        default_factory=lambda: Result(kind="write", summary="BATCH", trace_id=None)
    )


def _collection(stmt: Statement) -> str | None:
    if stmt.tables_written:
        return stmt.target
    return stmt.tables_read[0] if len(stmt.tables_read) == 1 else None


def _remaining(limit: float | None, started: float) -> float | None:
    """What is left of the statement's time limit; a timeout when nothing is."""
    if limit is None:
        return None
    left = limit - (time.monotonic() - started)
    if left <= 0:
        raise _timeout(limit)
    return left


_BATCH_ROWS = 100_000


def _fetch(
    cur: duckdb.DuckDBPyConnection, limit: int | None, max_bytes: int
) -> tuple[pa.Table, bool]:
    """The result, at most ``limit`` rows; :class:`TooLarge` past ``max_bytes`` (0 = no cap).

    Batches are counted as they arrive, so a result over the cap stops being fetched there
    instead of being materialised whole first.
    """
    reader = cur.to_arrow_reader(_BATCH_ROWS if limit is None else min(limit + 1, _BATCH_ROWS))
    batches: list[pa.RecordBatch] = []
    count = size = 0
    over = False
    for batch in reader:
        batches.append(batch)
        count += batch.num_rows
        size += batch.get_total_buffer_size()
        if max_bytes and size > max_bytes:
            over = True
            break
        if limit is not None and count > limit:
            break
    if over or (limit is not None and count > limit):
        # Finish the half-read result: left open it keeps the cursor's transaction (and, with a
        # SQLite catalog, a lock that blocks every other writer) alive.
        reader.close()
        cur.execute("SELECT 1").fetchall()
    if over:
        raise TooLarge(
            f"the result is larger than the limit of {max_bytes} bytes and was not returned: "
            "select fewer rows or columns (max_rows), or aggregate in SQL",
            [Violation("result_size", "result bytes limit", measured=size, limit=max_bytes)],
        )
    table = pa.Table.from_batches(batches, schema=reader.schema)
    if limit is not None and table.num_rows > limit:
        return table.slice(0, limit), True
    return table, False


def _timeout(limit: float | None) -> StatementTimeout:
    return StatementTimeout(
        f"the statement ran longer than its limit of {limit or 0:g} s and was stopped; "
        "nothing was committed",
        [Violation("timeout", "statement time limit", limit=limit)],
    )


def _engine_error(exc: Exception, expired: bool, timeout: float | None) -> LakewardenError:
    if expired or isinstance(exc, duckdb.InterruptException):
        return _timeout(timeout)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, duckdb.OutOfMemoryException | MemoryError) or first.startswith(
        "Out of Memory Error"  # the engine's own, passed on through an Arrow stream
    ):
        # The engine's memory limit, or the server's address-space cap, stopped the statement.
        return TooLarge(
            f"the statement needs more memory than the engine may use: {first}; "
            "nothing was committed",
            [Violation("memory_limit", first)],
        )
    if isinstance(exc, duckdb.PermissionException):
        return PolicyDenied(
            f"the engine refused file access: {first}", [Violation("engine_hardening", first)]
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
