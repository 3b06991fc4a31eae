"""The audit trail: an append-only table inside the lake itself.

A committed write's record is inserted in the same transaction as the write, so the data and the
audit can never disagree: the record exists exactly when the write does. Its snapshot id is not
stored (DuckLake assigns it at commit) but found through the commit id the commit carries in
its extra info (a random id, so it holds with tracing off).
Refused and failed statements committed nothing, and recording them must not make a snapshot
either: their records go to the same table's twin in the state database inside the lake folder.
Reading the trail reads both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from lakewarden.analysis.names import INTERNAL_SCHEMA
from lakewarden.errors import Violation
from lakewarden.store.engine import LAKE_ALIAS, STATE_ALIAS, Engine

log = logging.getLogger(__name__)

SCHEMA = INTERNAL_SCHEMA
TABLE = f"{SCHEMA}.audit"
REFUSALS = f"{STATE_ALIAS}.main.refusals"
AUTHOR = "lakewarden"

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

    def row(self) -> list[Any]:
        digest = hashlib.sha256(self.statement.encode()).hexdigest() if self.statement else None
        return [
            self.agent,
            self.decision,
            self.operation,
            self.summary,
            digest,
            list(self.tables),
            json.dumps([v.to_dict() for v in self.violations], default=str),
            self.trace_id,
            self.span_id,
            self.commit_id,
        ]


def ensure(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({_COLUMNS})")


def ensure_refusals(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(f"CREATE TABLE IF NOT EXISTS {REFUSALS} ({_COLUMNS})")


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
    agent: str | None,
    limit: int,
    is_lake: bool,
) -> list[dict[str, Any]]:
    """Newest first; a committed write's record carries the snapshot that holds it. Records of
    refused statements live in the state database (``refusals``, another DuckDB instance)."""
    snap = (
        f"(SELECT snapshot_id FROM {LAKE_ALIAS}.snapshots() s "
        "WHERE json_extract_string(s.commit_extra_info, '$.commit_id') = a.commit_id "
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
    rows += refusals.execute(
        f"SELECT {columns.format(snap='NULL')} FROM {REFUSALS} a {where} "
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
        ensure_refusals(self._refusals)
        prune(self._refusals, retention, REFUSALS)

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
                insert(self._refusals, [record], REFUSALS)
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
                    agent=agent,
                    limit=limit,
                    is_lake=self._engine.location.is_lake,
                )
        finally:
            cur.close()
