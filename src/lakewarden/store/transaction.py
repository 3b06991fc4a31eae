"""One lake transaction: its statements, what they wrote, and the commit with its marks.

A single write is a transaction of one statement; an atomic batch is one of several. The write
lock is held from :meth:`Transaction.begin` until the transaction is closed, which the caller
does right after the commit: the state the gate judges is the state the commit lands on, and no
work after the commit keeps other writers waiting. A commit is one DuckLake snapshot whose author is
the agent and whose extra info names the trace that made it, with its audit records inside.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import duckdb

from lakewarden.analysis import Statement
from lakewarden.errors import LakewardenError
from lakewarden.signals.checks import WriteCounts
from lakewarden.signals.delta import Delta
from lakewarden.signals.table_state import ColumnState, TableState
from lakewarden.store import audit, catalog, execute, faults, outcome, staging
from lakewarden.store.engine import LAKE_ALIAS, Engine
from lakewarden.store.execute import guarded
from lakewarden.store.writelock import WriteLock


@dataclass
class _Counts:
    inserted: int = 0
    deleted: int = 0
    updated: int = 0
    merged: bool = False  # a MERGE may insert, update and delete: its split is unknown


def _merge_split(touched: int, net: int, actions: tuple[str, ...]) -> tuple[int, int, int]:
    """Rows a MERGE inserted, deleted and updated, as far as the gate can know: the engine
    reports only ``touched`` (each row once) and the row count moves by ``net``. Without a
    DELETE clause the split is exact; with one, each kind is counted at the most it can be, so
    a MERGE is never judged more leniently than the DELETE or INSERT it could stand for."""
    if "delete" not in actions:
        inserted = max(net, 0)
        return inserted, 0, touched - inserted
    if "insert" not in actions:
        deleted = max(-net, 0)
        return 0, deleted, touched - deleted
    # touched = I + D + U and net = I - D: each bound is reached when U = 0
    upper_deleted = max((touched - net) // 2, max(-net, 0))
    upper_inserted = max((touched + net) // 2, max(net, 0))
    updated = touched - upper_deleted - upper_inserted if "update" in actions else 0
    return upper_inserted, upper_deleted, max(updated, 0)


@dataclass(frozen=True)
class Commit:
    """What a commit made: the snapshot (None on a plain DuckDB file) and when.

    The snapshot id is the one after the snapshot the transaction read, which DuckLake gives
    the commit unless another process committed in between: ``certain`` says whether that
    could happen (a catalog one process holds); when it could, the id is found again by
    ``commit_id`` in the lake's snapshot list. The time is this process's clock at the commit
    (DuckLake stamps the snapshot with its catalog's clock in the same instant).
    """

    snapshot_id: int | None
    time: float
    commit_id: str
    certain: bool = True


class Transaction:
    """Use as a context manager: leaving the block rolls back what was not committed and
    releases the write lock."""

    def __init__(
        self,
        cur: duckdb.DuckDBPyConnection,
        write_lock: WriteLock,
        *,
        is_lake: bool,
        database: str,
        exclusive: bool = False,
        stager: staging.Staging | None = None,
        find: Callable[[str, int], int | None] | None = None,
    ) -> None:
        self.cur = cur
        self.statements: list[Statement] = []
        self.shape_changed = False
        self._lock = write_lock
        self._is_lake = is_lake
        self._exclusive = exclusive
        self._stager = stager if is_lake else None
        self._staged: dict[str, Delta] = {}  # tables whose every insert was staged
        self._unstaged: set[str] = set()
        self._database = database
        # Finds a commit in the lake by its id after the snapshot it followed (shared
        # catalogs, whose server can go away mid-commit).
        self._find = find
        self._written: dict[str, None] = {}
        self._counts: dict[str, _Counts] = {}
        self._open = False
        self._locked = False
        # A row-level statement changed at least one row: the commit is a snapshot of its own
        # (DuckLake makes none for a transaction that changed nothing).
        self._changed_rows = False

    @classmethod
    def on(
        cls,
        engine: Engine,
        cur: duckdb.DuckDBPyConnection,
        stager: staging.Staging | None = None,
    ) -> Transaction:
        """A transaction of ``engine`` on the caller's cursor ``cur``; with ``stager``, its
        inserts are staged and measured before the commit (:mod:`lakewarden.store.staging`)."""
        loc = engine.location
        within = engine.settings.statement_timeout_s or outcome.DEFAULT_WAIT_S
        return cls(
            cur,
            engine.write_lock,
            is_lake=loc.is_lake,
            database=engine.database,
            exclusive=loc.exclusive,
            stager=stager,
            find=None
            if loc.dsn is None
            else lambda commit_id, after: outcome.find(engine, commit_id, after, within),
        )

    def __enter__(self) -> Transaction:
        self.begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def begin(self) -> None:
        self._lock.acquire()
        self._locked = True
        try:
            self.cur.begin()
        except BaseException:
            self.close()
            raise
        self._open = True

    def run(
        self,
        stmt: Statement,
        params: Sequence[Any] | None,
        budget: float | None,
        limit: float | None,
    ) -> int | None:
        """Execute one statement inside the transaction; return the rows it affected."""
        for table in stmt.tables_written:
            self.register(table)
        merge = stmt.statement_type == "MERGE_INTO" and stmt.target is not None
        with guarded(self.cur, budget, limit):
            staged = self._insert_staged(stmt, params)
            if staged is not None:
                rows: list[Any] | None = [(staged,)]
            else:
                rows_before = self._rows(stmt.target) if merge and stmt.target else 0
                self.cur.execute(stmt.text, params)
                rows = self.cur.fetchall() if self.cur.description else None
                rows_after = self._rows(stmt.target) if merge and stmt.target else 0
        self.statements.append(stmt)
        if stmt.kind == "ddl":
            self.shape_changed = True
            return None
        affected = int(rows[0][0]) if rows else 0
        self._changed_rows = self._changed_rows or affected > 0
        if stmt.target:
            counts = self._counts.setdefault(stmt.target, _Counts())
            if stmt.statement_type == "INSERT":
                counts.inserted += affected
            elif stmt.statement_type == "DELETE":
                counts.deleted += affected
            elif merge:
                inserted, deleted, updated = _merge_split(
                    affected, rows_after - rows_before, stmt.merge_actions
                )
                counts.inserted += inserted
                counts.deleted += deleted
                counts.updated += updated
                counts.merged = True
            else:
                counts.updated += affected
        return affected

    def _insert_staged(self, stmt: Statement, params: Sequence[Any] | None) -> int | None:
        """Run an INSERT through a stage and keep its delta; None when it was not run."""
        target = stmt.target
        if target is None or stmt.kind != "write":
            return None
        if self._stager is None or stmt.statement_type != "INSERT" or self.shape_changed:
            self._unstaged.add(target)
            return None
        state = self._stager.known(target)
        done = None
        if state is not None:
            done = staging.insert(
                self.cur, stmt.text, params, target, self._stager, state.event_time_column
            )
        if done is None:
            self._unstaged.add(target)
            return None
        inserted, delta = done
        before = self._staged.get(target)
        self._staged[target] = before.plus(delta) if before is not None else delta
        return inserted

    def _rows(self, table: str) -> int:
        return catalog.profile(self.cur, table, [], None).rows

    def register(self, table: str) -> None:
        """Note that the transaction writes ``table`` outside :meth:`run` (e.g. a restore)."""
        self._written.setdefault(table)

    @property
    def tables_written(self) -> tuple[str, ...]:
        return tuple(self._written)

    @property
    def insert_only(self) -> frozenset[str]:
        """Tables this transaction only inserted into."""
        return frozenset(
            t for t, c in self._counts.items() if not (c.deleted or c.updated or c.merged)
        )

    # -- what the gate sees (lakewarden.governance.gate.Projector) ---------------------------

    def counts(self, table: str) -> WriteCounts:
        c = self._counts.get(table, _Counts())
        return WriteCounts(c.inserted, c.deleted, c.updated)

    def project(
        self, table: str, before: TableState | None, columns: Callable[[str], bool]
    ) -> TableState | None:
        """The state ``table`` would be committed in, measured inside the transaction with
        one aggregate over the chosen columns (the others keep their known null counts)."""
        schema = catalog.schemas(self.cur, self._database).get(table)
        if schema is None:
            return None
        prof = catalog.profile(self.cur, table, [c for c in schema if columns(c)], None)
        old = {c.name: c.null_count for c in before.columns} if before else {}
        return (before or TableState(name=table)).with_changes(
            rows=prof.rows,
            columns=tuple(
                ColumnState(name, dtype, prof.null_counts.get(name, old.get(name, 0)))
                for name, dtype in schema.items()
            ),
        )

    def staged(self, table: str) -> Delta | None:
        """What this transaction inserted into ``table``, measured before it commits, when
        every write to it was a staged insert; None otherwise (the change feed measures it)."""
        counts = self._counts.get(table)
        if table in self._unstaged or counts is None or counts.deleted or counts.updated:
            return None
        return self._staged.get(table)

    # -- the end ---------------------------------------------------------------------------

    def commit(
        self,
        agent: str,
        summary: str,
        trace_id: str | None,
        span_id: str | None,
        records: Sequence[audit.AuditRecord],
    ) -> Commit:
        """Commit as one snapshot with its audit records inside. The write lock stays held
        until the transaction is closed: the caller notes the commit's place in the commit
        order first, then releases it.

        On a lake whose transaction changed rows, the records ride in the snapshot's extra
        info: one catalog write fewer than an audit row (measured: a one-row INSERT's commit
        16 ms instead of 24). Otherwise (DDL, a restore, a write that matched no row, a plain
        DuckDB file) they are rows of the audit table, which also makes the commit a snapshot.
        """
        commit_id = uuid.uuid4().hex
        stamped = [replace(r, commit_id=commit_id) for r in records]
        # DDL in the same transaction could undo the rows (CREATE, INSERT, DROP): a table row.
        inline = self._is_lake and self._changed_rows and not self.shape_changed
        base = None
        try:
            if not inline:
                audit.insert(self.cur, stamped)
            if self._is_lake:
                extra = audit.commit_info(trace_id, span_id, commit_id, stamped if inline else ())
                self.cur.execute(
                    f"CALL {LAKE_ALIAS}.set_commit_message(?, ?, extra_info => ?)",
                    [agent, summary, extra],
                )
                if records:  # rows changed, or an audit row: DuckLake makes a snapshot
                    base = self._stager.tables.snapshot if self._stager is not None else None
                    if base is None:  # the snapshot it follows, unless a stage said so
                        base = catalog.current_snapshot(self.cur)
            self.cur.commit()
        except execute.ENGINE_ERRORS as exc:
            # A commit the catalog refused (a conflicting commit by another writer, the
            # catalog unreachable): rolled back, and said in lakewarden's terms. The engine's
            # own transaction (stage tables included) is over either way.
            self.rollback()
            error = execute.engine_error(exc, False, None)
            found = self._found_after_all(error, commit_id, base)
            if found is None:
                raise error from exc
            return Commit(found, time.time(), commit_id)
        except BaseException:
            self.rollback()
            raise
        self._open = False
        if self._stager is not None:
            self._stager.tables.committed()
        when = time.time()
        if base is None:
            return Commit(None, when, commit_id)
        return Commit(base + 1, when, commit_id, certain=self._exclusive)

    def _found_after_all(
        self, error: LakewardenError, commit_id: str, base: int | None
    ) -> int | None:
        """The snapshot of a commit whose answer the catalog's server lost, when it did land
        (see :mod:`lakewarden.store.outcome`); None when the commit certainly did not."""
        if not faults.answer_lost(error) or base is None or self._find is None:
            return None
        return self._find(commit_id, base)

    def rollback(self) -> None:
        if self._open:
            self._open = False
            if self._stager is not None:
                self._stager.tables.rolled_back()
            with contextlib.suppress(duckdb.Error):  # the engine may have aborted it
                self.cur.rollback()

    def close(self) -> None:
        """Roll back what was not committed and release the write lock."""
        try:
            self.rollback()
        finally:
            if self._locked:
                self._locked = False
                self._lock.release()
