"""The audit trail: inside the lake itself, committed with the change it records.

A committed change's records are part of its commit, so the data and the audit can never
disagree: a record exists exactly when the change does. On a DuckLake lake, a commit that
changed rows carries its records in its snapshot's extra info (key ``audit``, beside the trace
and the commit id), author = agent, time = the snapshot's: no second table in the commit. A
commit that may change no row by itself (DDL, a restore, a write that matched nothing) and every
commit on a plain DuckDB file insert their records into an append-only table instead, which also
makes such a commit a snapshot; its snapshot id is found through the commit id the commit
carries in its extra info (a random id, so it holds with tracing off).
Refused and failed statements committed nothing, and recording them must not make a snapshot
either: their records go to the table's twin in the state database inside the lake folder.
Reading the trail reads all three.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from lakewarden.analysis.names import INTERNAL_SCHEMA
from lakewarden.errors import Violation
from lakewarden.store import catalog
from lakewarden.store.engine import LAKE_ALIAS, Engine

log = logging.getLogger(__name__)

SCHEMA = INTERNAL_SCHEMA
TABLE = f"{SCHEMA}.audit"
AUTHOR = "lakewarden"
_KEY = "audit"  # in a snapshot's extra info

_COLUMNS = (
    "time TIMESTAMPTZ, agent VARCHAR, decision VARCHAR, operation VARCHAR, summary VARCHAR, "
    "statement_hash VARCHAR, tables VARCHAR[], violations VARCHAR, trace_id VARCHAR, "
    "span_id VARCHAR, commit_id VARCHAR"
)


@dataclass(frozen=True)
class AuditRecord:
    agent: str
    decision: str  # allowed | denied | blocked | failed | restored
    operation: str
    summary: str
    statement: str = ""  # hashed, never stored: it may hold values
    tables: tuple[str, ...] = ()
    violations: tuple[Violation, ...] = field(default_factory=tuple)
    trace_id: str | None = None
    span_id: str | None = None
    commit_id: str | None = None  # set by the transaction that commits the record

    @property
    def statement_hash(self) -> str | None:
        return hashlib.sha256(self.statement.encode()).hexdigest() if self.statement else None

    def row(self) -> list[Any]:
        return [
            self.agent,
            self.decision,
            self.operation,
            self.summary,
            self.statement_hash,
            list(self.tables),
            json.dumps([v.to_dict() for v in self.violations], default=str),
            self.trace_id,
            self.span_id,
            self.commit_id,
        ]

    def entry(self) -> dict[str, Any]:
        """The record as it rides in a snapshot's extra info (the snapshot holds the rest)."""
        return {
            "decision": self.decision,
            "operation": self.operation,
            "summary": self.summary,
            "statement_hash": self.statement_hash,
            "tables": list(self.tables),
            "violations": [v.to_dict() for v in self.violations],
        }


def commit_info(
    trace_id: str | None, span_id: str | None, commit_id: str, records: Sequence[AuditRecord]
) -> str:
    """A commit's extra info: its trace, its commit id and, when given, its audit records."""
    info: dict[str, Any] = {"trace_id": trace_id, "span_id": span_id, "commit_id": commit_id}
    if records:
        info[_KEY] = [r.entry() for r in records]
    return json.dumps(info, default=str)


def ensure(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({_COLUMNS})")


def ensure_refusals(cur: duckdb.DuckDBPyConnection, table: str) -> None:
    cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({_COLUMNS})")


def insert(cur: duckdb.DuckDBPyConnection, records: list[AuditRecord], table: str = TABLE) -> None:
    """Append ``records`` (inside the caller's open transaction, if any)."""
    if records:
        cur.executemany(
            f"INSERT INTO {table} VALUES (now(), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [r.row() for r in records],
        )


def prune(cur: duckdb.DuckDBPyConnection, older_than_days: float, table: str = TABLE) -> None:
    """Delete records older than the retention period (inside the caller's transaction)."""
    cur.execute(
        f"DELETE FROM {table} WHERE time < now() - to_seconds(?::DOUBLE)",
        [older_than_days * 86400],
    )


def read(
    cur: duckdb.DuckDBPyConnection,
    refusals: duckdb.DuckDBPyConnection,
    *,
    refusals_table: str,
    agent: str | None,
    limit: int,
    is_lake: bool,
) -> list[dict[str, Any]]:
    """Newest first; a committed change's record carries the snapshot that holds it. Records of
    refused statements live in the state database (``refusals``, another DuckDB instance)."""
    snap = (
        f"(SELECT snapshot_id FROM {LAKE_ALIAS}.snapshots() s "
        # CASE, not AND: another writer's extra info may not be JSON, and only CASE is sure
        # not to parse it
        "WHERE CASE WHEN json_valid(s.commit_extra_info) "
        "THEN json_extract_string(s.commit_extra_info, '$.commit_id') END = a.commit_id "
        "AND a.decision IN ('allowed', 'restored') LIMIT 1)"
        if is_lake
        else "NULL"
    )
    where = "WHERE a.agent = ?" if agent else ""
    params: list[Any] = [agent] if agent else []
    columns = (
        "a.time, a.agent, a.decision, a.operation, a.summary, a.statement_hash, a.tables, "
        "a.violations, {snap} AS snapshot_id, a.trace_id"
    )
    rows = cur.execute(
        f"SELECT {columns.format(snap=snap)} FROM {TABLE} a {where} ORDER BY a.time DESC LIMIT ?",
        [*params, int(limit)],
    ).fetchall()
    if is_lake:
        rows += _from_snapshots(cur, agent, limit)
    rows += refusals.execute(
        f"SELECT {columns.format(snap='NULL')} FROM {refusals_table} a {where} "
        "ORDER BY a.time DESC LIMIT ?",
        [*params, int(limit)],
    ).fetchall()
    rows = sorted(rows, key=lambda row: row[0], reverse=True)[: int(limit)]
    out = []
    for when, who, decision, op, summary, digest, tables, violations, sid, trace in rows:
        out.append(
            {
                "time": when.isoformat() if isinstance(when, datetime) else str(when),
                "agent": who,
                "decision": decision,
                "operation": op,
                "summary": summary,
                "statement_hash": digest,
                "tables": list(tables or []),
                "violations": json.loads(violations or "[]"),
                "snapshot_id": sid,
                "trace_id": trace,
            }
        )
    return out


def _from_snapshots(
    cur: duckdb.DuckDBPyConnection, agent: str | None, limit: int
) -> list[tuple[Any, ...]]:
    """The records the newest ``limit`` snapshots carry in their extra info (each carries at
    least one, so that is enough), as rows of the audit table's shape."""
    where = "AND author = ?" if agent else ""
    params: list[Any] = [agent] if agent else []
    found = cur.execute(
        "SELECT snapshot_time, author, snapshot_id, commit_extra_info "
        f"FROM {LAKE_ALIAS}.snapshots() WHERE commit_extra_info LIKE ? {where} "
        "ORDER BY snapshot_id DESC LIMIT ?",
        [f'%"{_KEY}"%', *params, int(limit)],
    ).fetchall()
    rows: list[tuple[Any, ...]] = []
    for when, author, sid, extra in found:
        info = catalog.extra_info(extra)
        entries = info.get(_KEY)
        trace = catalog.string_or_none(info.get("trace_id"))
        for e in entries if isinstance(entries, list) else ():
            if isinstance(e, dict):
                rows.append((when, author, *_entry_fields(e), sid, trace))
    return rows


def _entry_fields(entry: dict[str, Any]) -> tuple[Any, ...]:
    """An entry's fields in the audit table's types: anyone who can commit to the catalog can
    write extra info, so nothing in it is trusted to have the shape lakewarden gives it."""
    tables = entry.get("tables")
    violations = entry.get("violations")
    return (
        catalog.string_or_none(entry.get("decision")),
        catalog.string_or_none(entry.get("operation")),
        catalog.string_or_none(entry.get("summary")),
        catalog.string_or_none(entry.get("statement_hash")),
        [t for t in tables if isinstance(t, str)] if isinstance(tables, list) else [],
        json.dumps(_violations(violations)),
    )


def _violations(value: Any) -> list[dict[str, Any]]:
    """The items of ``value`` that have a violation's shape (text ``rule`` and ``detail``), with
    a violation's fields only: what the audit answers is what every violation looks like."""
    out = []
    for v in value if isinstance(value, list) else ():
        if (
            isinstance(v, dict)
            and isinstance(v.get("rule"), str)
            and isinstance(v.get("detail"), str)
        ):
            table = catalog.string_or_none(v.get("table"))
            out.append(Violation(v["rule"], v["detail"], v.get("measured"), v.get("limit"), table))
    return [v.to_dict() for v in out]


class AuditLog:
    """The audit trail of one engine: its tables made ready, refusals recorded, records read.

    It has a lock of its own, held only while it writes or reads refusals (a DuckDB cursor
    is not safe to share between threads), so no agent's session waits on it.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        retention = engine.settings.audit_retention_days
        with engine.write_lock:
            self._bookkeeping(ensure, "audit trail")
            self._bookkeeping(lambda cur: prune(cur, retention), "audit retention")
        self._refusals = engine.state_cursor()
        # Beside lakewarden's other state: shared by the sidecars of a PostgreSQL catalog.
        self._refusals_table = f"{engine.state_schema}.refusals"
        ensure_refusals(self._refusals, self._refusals_table)
        prune(self._refusals, retention, self._refusals_table)

    def _bookkeeping(
        self, work: Callable[[duckdb.DuckDBPyConnection], object], message: str
    ) -> None:
        """Run lakewarden's own change in a commit authored by lakewarden."""
        cur = self._engine.cursor()
        try:
            cur.begin()
            try:
                work(cur)
                if self._engine.location.is_lake:
                    cur.execute(f"CALL {LAKE_ALIAS}.set_commit_message(?, ?)", [AUTHOR, message])
                cur.commit()
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    cur.rollback()
                raise
        finally:
            cur.close()

    def refused(self, record: AuditRecord) -> None:
        """Record a decision that committed nothing (denied, blocked, failed); never raises."""
        try:
            with self._lock:
                insert(self._refusals, [record], self._refusals_table)
        except Exception:
            log.exception("could not write the audit record of a refused statement")

    def read(self, agent: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first, committed and refused records together."""
        cur = self._engine.cursor()
        try:
            with self._lock:
                return read(
                    cur,
                    self._refusals,
                    refusals_table=self._refusals_table,
                    agent=agent,
                    limit=limit,
                    is_lake=self._engine.location.is_lake,
                )
        finally:
            cur.close()
