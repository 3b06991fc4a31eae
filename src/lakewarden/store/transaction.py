"""One lake transaction of a session: its statements, the quality gate, the commit and its marks.

A single write is a transaction of one statement; an atomic batch is one of several. Either way
the gate judges the state the transaction would leave, before anything is visible to anyone,
and a commit is one DuckLake snapshot whose author is the agent and whose extra info names the
trace that made it.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import duckdb

from lakewarden.analysis import Statement
from lakewarden.errors import Violation
from lakewarden.signals import checks
from lakewarden.signals.table_state import ColumnState, TableState
from lakewarden.store import audit, catalog
from lakewarden.store.deadline import WATCHDOG
from lakewarden.store.engine import LAKE_ALIAS
from lakewarden.core.tracker import TableUpdate

if TYPE_CHECKING:
    from lakewarden.core.warden import Warden


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
class Verdict:
    """What the gate found, and the state each contracted table would be left in."""

    violations: list[Violation] = field(default_factory=list)
    projected: dict[str, TableState] = field(default_factory=dict)


class Transaction:
    def __init__(self, warden: Warden, cur: duckdb.DuckDBPyConnection, agent: str) -> None:
        self.warden = warden
        self.cur = cur
        self.agent = agent
        self.statements: list[Statement] = []
        self.shape_changed = False
        self._before: dict[str, TableState | None] = {}
        self._counts: dict[str, _Counts] = {}
        self._open = False
        self._locked = False

    def begin(self) -> None:
        self.warden.engine.write_lock.acquire()
        self._locked = True
        try:
            self.cur.begin()
        except BaseException:
            self._release()
            raise
        self._open = True

    def run(
        self, stmt: Statement, params: Sequence[Any] | None, timeout: float | None, on_error: Any
    ) -> int | None:
        """Execute one statement inside the transaction; return the rows it affected."""
        for table in stmt.tables_written:
            self.register(table)
        merge = stmt.statement_type == "MERGE_INTO" and stmt.target is not None
        with WATCHDOG.guard(self.cur, timeout) as deadline:
            try:
                rows_before = self._rows(stmt.target) if merge and stmt.target else 0
                self.cur.execute(stmt.text, params)
                rows = self.cur.fetchall() if self.cur.description else None
                rows_after = self._rows(stmt.target) if merge and stmt.target else 0
            except duckdb.Error as exc:
                raise on_error(exc, deadline.expired, timeout) from exc
        self.statements.append(stmt)
        if stmt.kind == "ddl":
            self.shape_changed = True
            return None
        affected = int(rows[0][0]) if rows else 0
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

    def _rows(self, table: str) -> int:
        return catalog.profile(self.cur, table, [], None).rows

    def register(self, table: str) -> None:
        """Note that the transaction writes ``table`` outside :meth:`run` (e.g. a restore)."""
        if table not in self._before:
            self._before[table] = self.warden.tracker.get(table)

    @property
    def tables_written(self) -> tuple[str, ...]:
        return tuple(self._before)

    def verdict(self) -> Verdict:
        """Judge every written table that has a contract, as the transaction would leave it.

        Measured inside the transaction with one aggregate over the contracted columns, so what
        is judged is exactly what would be committed.
        """
        policy = self.warden.policy
        contracted = {t: c for t in self._before if (c := policy.contract(t)) is not None}
        if not contracted:
            return Verdict()
        schemas = catalog.schemas(self.cur, self.warden.engine.database)
        out = Verdict()
        for table, contract in contracted.items():
            before = self._before[table]
            schema = schemas.get(table)
            if schema is None:
                continue  # dropped in this transaction: nothing left to judge
            wanted = [c for c in schema if contract.column(c) is not None]
            prof = catalog.profile(self.cur, table, wanted, None)
            old = {c.name: c.null_count for c in before.columns} if before else {}
            after = (before or TableState(name=table)).with_changes(
                rows=prof.rows,
                columns=tuple(
                    ColumnState(name, dtype, prof.null_counts.get(name, old.get(name, 0)))
                    for name, dtype in schema.items()
                ),
            )
            counts = self._counts.get(table, _Counts())
            findings = checks.gate(
                before,
                after,
                checks.WriteCounts(counts.inserted, counts.deleted, counts.updated),
                contract,
            )
            out.projected[table] = after
            out.violations.extend(
                Violation(f.check, f"{table}: {f.detail}", f.measured, f.limit, table)
                for f in findings
            )
        return out

    def commit(
        self,
        summary: str,
        trace_id: str | None,
        span_id: str | None,
        records: list[audit.AuditRecord],
    ) -> tuple[int | None, dict[str, TableUpdate]]:
        """Commit as one snapshot, its audit records inside it, and update the table signals."""
        warden = self.warden
        is_lake = warden.engine.location.is_lake
        commit_id = uuid.uuid4().hex
        try:
            audit.insert(self.cur, [replace(r, commit_id=commit_id) for r in records])
            if is_lake:
                extra = json.dumps(
                    {"trace_id": trace_id, "span_id": span_id, "commit_id": commit_id}
                )
                self.cur.execute(
                    f"CALL {LAKE_ALIAS}.set_commit_message(?, ?, extra_info => ?)",
                    [self.agent, summary, extra],
                )
            self.cur.commit()
        except BaseException:
            self.rollback()
            raise
        self._open = False
        try:
            last = catalog.last_commit(self.cur) if is_lake else None
            snapshot_id, when = (last[0], last[1].timestamp()) if last else (None, None)
            known = warden.tracker.snapshot_id
            if snapshot_id is not None and known is not None and snapshot_id <= known:
                # DuckLake made no snapshot (the transaction changed nothing): this id is an
                # older commit of this cursor, already applied; never claim it.
                snapshot_id = None
            insert_only = frozenset(
                t for t, c in self._counts.items() if not (c.deleted or c.updated or c.merged)
            )
            updates = warden.tracker.record(
                snapshot_id,
                self.tables_written,
                self.agent,
                shape_changed=self.shape_changed,
                when=when,
                insert_only=insert_only,
            )
            return snapshot_id, updates
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            if self._open:
                self._open = False
                with contextlib.suppress(duckdb.Error):  # the engine may have aborted it
                    self.cur.rollback()
        finally:
            self._release()

    def _release(self) -> None:
        if self._locked:
            self._locked = False
            self.warden.engine.write_lock.release()
