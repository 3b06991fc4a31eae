"""A governed session: one agent's statements, each analysed, checked, run, traced and measured.

The path of one statement, in order: analyse (``analysis``) -> govern (``governance.grants``) ->
execute (``store``) -> gate (``governance.gate``) -> commit and measure (``core.commit``) ->
record (``telemetry``, off the agent's path, and the audit trail).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from lakewarden.analysis import Statement, analyze
from lakewarden.core.commit import commit
from lakewarden.core.stages import Stages
from lakewarden.errors import (
    ExecutionError,
    InvalidRequest,
    InvalidSQL,
    StatementTimeout,
    Violation,
)
from lakewarden.result import Result
from lakewarden.store import execute
from lakewarden.store.audit import AuditRecord
from lakewarden.store.plan import Planner
from lakewarden.store.staging import StageTables
from lakewarden.store.transaction import Transaction
from lakewarden.telemetry import spans
from lakewarden.telemetry.recorder import Event


class Session:
    """One agent's connection to the lake. Use it as a context manager; it is cheap to open.

    Each write is its own atomic, gated commit, unless it runs inside :meth:`transaction`, where
    every statement up to the end of the block commits together, gated as a unit, or not at all.
    """

    def __init__(self, stages: Stages, agent: str) -> None:
        if not agent or not isinstance(agent, str):
            raise ValueError("a session needs an agent name")
        self.agent = agent
        self._stages = stages
        self._cur = stages.engine.cursor()
        self._planner = Planner(self._cur)
        self._stage_tables = StageTables()  # temporary tables belong to this cursor
        self._closed = False
        self._tx: Transaction | None = None
        self._tx_span: spans.Parent | None = None
        self._tx_catalog: int | None = None  # the catalog's generation when the tx began
        self._batch_started: float | None = None  # an atomic batch spends one time budget

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
                self._tx.close()
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
        stages = self._stages
        # One deadline for the whole statement: analysis and governance spend from the same
        # budget as execution and fetching, so a slow analysis cannot buy more engine time.
        started = self._batch_started or time.monotonic()
        event = spans.statement(self.agent, stages.namespace, traceparent, self._tx_span)
        try:
            stmt = analyze(sql, stages.settings.max_statement_chars)
        except InvalidSQL as exc:
            self._refused(event, exc, None, sql if isinstance(sql, str) else "")
            raise
        spans.analysed(event, stmt, stages.namespace)
        try:
            _check_arguments(max_rows, expect)
            _check_kind(stmt, expect)
            limit = stages.grants.timeout(self.agent)
            checked_at = self._catalog_version()
            flagged = self._govern(stmt, _remaining(limit, started), limit)
            budget = _remaining(limit, started)
            if stmt.kind == "read":
                result = self._read(stmt, params, max_rows, budget, limit, event)
            elif self._tx is not None:
                if dry_run:
                    raise InvalidSQL("dry_run applies to a whole transaction, not one statement")
                affected = self._tx.run(stmt, params, budget, limit)
                result = Result(
                    kind=stmt.kind,
                    summary=stmt.summary,
                    trace_id=event.trace_hex,
                    rows_affected=affected,
                )
            else:
                with Transaction.on(
                    stages.engine, self._cur, stages.stager(self._stage_tables)
                ) as tx:
                    if self._catalog_version() != checked_at:
                        # A DDL committed while this write waited for the lock: the verdict
                        # was taken on the catalog before it, the write runs on the one after.
                        flagged = self._govern(stmt, _remaining(limit, started), limit)
                        budget = _remaining(limit, started)
                    affected = tx.run(stmt, params, budget, limit)
                    result = self._conclude(tx, event, dry_run)
                result = replace(result, rows_affected=affected)
        except Exception as exc:
            # Engine errors were mapped by the store; anything else is a bug, traced and
            # audited as a failure, then left to the intake to report as an internal error.
            self._refused(event, exc, stmt, stmt.text)
            raise
        event.violations = tuple(flagged) + tuple(v for v in result.violations if v not in flagged)
        if flagged:
            result = replace(result, violations=result.violations + tuple(flagged))
        self._recorded(event)
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
        stages = self._stages
        event = spans.statement(self.agent, stages.namespace, traceparent)
        spans.batch(event, (), stages.namespace)
        handle = TransactionHandle(trace_id=event.trace_hex)
        # Noted before the engine's transaction takes its snapshot: if the catalog has moved
        # since, the transaction may plan on an older one than the verdict cache is keyed by.
        catalog_at_begin = self._catalog_version()
        with Transaction.on(stages.engine, self._cur, stages.stager(self._stage_tables)) as tx:
            self._tx, self._tx_span = tx, spans.child(event)
            self._tx_catalog = catalog_at_begin
            try:
                yield handle
                handle.result = self._conclude(tx, event, dry_run)
            except Exception as exc:
                tx.rollback()
                spans.batch(event, tx.tables_written, stages.namespace)
                self._refused(
                    event,
                    exc,
                    None,
                    "\n".join(s.text for s in tx.statements),
                    summary="BATCH " + " ".join(tx.tables_written),
                    tables=tx.tables_written,
                )
                raise
            finally:
                self._tx, self._tx_span, self._tx_catalog = None, None, None
        spans.batch(event, tx.tables_written, stages.namespace)
        self._recorded(event)

    # -- the steps -------------------------------------------------------------------------

    def _govern(
        self, stmt: Statement, budget: float | None, limit: float | None
    ) -> list[Violation]:
        """The grants' decision, taken on the engine's plan of the statement. Planning is
        part of the statement's time: a statement built to be slow to plan is stopped like
        one slow to run, from the same budget."""
        stages = self._stages
        # Verdicts depend on what statements bind against (tables, views, macros, types),
        # never on the data: the plan described is the binder's, before the optimizer could
        # prune a scan on statistics. Inside a transaction that changed the catalog, plans
        # differ from the committed catalog's: such verdicts are neither taken from nor put
        # into the cache. Nor inside one that began before the last catalog change: it plans
        # on the catalog of its start, and a verdict cached under the current generation
        # would be replayed outside it.
        current = self._catalog_version()
        stale = self._tx is not None and (self._tx.shape_changed or self._tx_catalog != current)
        version = None if stale else 0
        with execute.guarded(self._cur, budget, limit):
            return stages.grants.check(self.agent, stmt, self._planner, version)

    def _catalog_version(self) -> int:
        return self._stages.grants.generation

    def _read(
        self,
        stmt: Statement,
        params: Sequence[Any] | None,
        max_rows: int | None,
        budget: float | None,
        limit: float | None,
        event: Event,
    ) -> Result:
        stages = self._stages
        table, truncated = execute.read(
            self._cur,
            stmt.text,
            params,
            max_rows=stages.grants.row_limit(self.agent, max_rows),
            max_bytes=stages.settings.max_result_bytes,
            budget=budget,
            limit=limit,
            # Second wall for an agent that may not write (see execute.read).
            contained=self._tx is None and stages.grants.read_only(self.agent),
            # A lone read changes nothing: once its client has gone it is stopped rather than
            # run and fetched for nobody (measured: clients that sent a 30 s read and left
            # kept the workers busy for minutes after they had gone). A write, or a read inside
            # a transaction, runs to its end: its outcome is committed or not, and audited.
            abandonable=self._tx is None,
        )
        event.returned_rows = table.num_rows
        return Result(
            kind="read",
            summary=stmt.summary,
            trace_id=event.trace_hex,
            table=table,
            truncated=truncated,
        )

    def _conclude(self, tx: Transaction, event: Event, dry_run: bool) -> Result:
        """Gate, then commit (or roll back for a dry run or a blocked write)."""
        stages = self._stages
        kinds = {s.kind for s in tx.statements}
        kind = "ddl" if kinds == {"ddl"} else ("write" if kinds - {"read"} else "read")
        summary = (
            tx.statements[0].summary
            if len(tx.statements) == 1
            else "BATCH " + " ".join(tx.tables_written)
        )
        if stages.gate.judges(tx.tables_written):
            # The gate judges the state this write commits on: earlier commits' signals first.
            stages.tracker.settle()
        before = {t: stages.tracker.get(t) for t in tx.tables_written}
        verdict = stages.gate.judge(tx.tables_written, before, tx)
        if dry_run:
            tx.rollback()
            event.dry_run = True
            return Result(
                kind=kind,
                summary=summary,
                trace_id=event.trace_hex,
                dry_run=True,
                signals=verdict.projected,
                violations=verdict.violations,
            )
        if verdict.violations and stages.grants.enforced(self.agent):
            raise stages.gate.refusal(summary, verdict)
        records = [
            AuditRecord(
                agent=self.agent,
                decision=spans.ALLOWED,
                operation=s.operation,
                summary=s.summary,
                statement=s.text,
                tables=s.tables,
                violations=verdict.violations,
                trace_id=event.trace_hex,
                span_id=event.span_hex,
            )
            for s in tx.statements
        ]
        snapshot_id, signals = commit(
            stages, tx, event, agent=self.agent, summary=summary, records=records
        )
        return Result(
            kind=kind,
            summary=summary,
            trace_id=event.trace_hex,
            snapshot_id=snapshot_id,
            signals=signals,
            violations=verdict.violations,
        )

    # -- telemetry and audit -----------------------------------------------------------------

    def _recorded(self, event: Event) -> None:
        self._stages.recorder.submit(spans.ended(event))

    def _refused(
        self,
        event: Event,
        error: BaseException,
        stmt: Statement | None,
        text: str,
        *,
        summary: str | None = None,
        tables: tuple[str, ...] = (),
    ) -> None:
        """Trace, count and audit a statement that committed nothing."""
        spans.refused(event, error)
        self._stages.recorder.submit(event)
        if self._tx is not None and stmt is not None:
            return  # inside a transaction, the transaction's outcome is audited
        self._stages.audit.refused(
            AuditRecord(
                agent=self.agent,
                decision=event.decision,
                operation=stmt.operation if stmt else event.operation,
                summary=summary or (stmt.summary if stmt else "invalid SQL"),
                statement=text,
                tables=stmt.tables if stmt else tables,
                violations=event.violations,
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


def _check_arguments(max_rows: object, expect: object) -> None:
    """Arguments the engine would fail on with an error of its own (a negative row count)."""
    if max_rows is not None and (
        isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows <= 0
    ):
        raise InvalidRequest(
            "max_rows must be a positive whole number",
            [Violation("max_rows", f"{max_rows!r} is not a positive whole number")],
        )
    if expect not in (None, "read", "write"):
        raise InvalidRequest(
            'expect must be "read" or "write"',
            [Violation("expect", f"{expect!r} is neither read nor write")],
        )


def _check_kind(stmt: Statement, expect: str | None) -> None:
    if expect is not None and (stmt.kind == "read") != (expect == "read"):
        raise InvalidRequest(
            f"this call runs {expect} statements, not {stmt.kind} statements",
            [Violation("wrong_tool", f"a {stmt.kind} statement where a {expect} was expected")],
        )


def _remaining(limit: float | None, started: float) -> float | None:
    """What is left of the statement's time limit; a timeout when nothing is."""
    if limit is None:
        return None
    left = limit - (time.monotonic() - started)
    if left <= 0:
        raise StatementTimeout.after(limit)
    return left
