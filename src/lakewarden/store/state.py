"""Persisted table state, so signals and metrics survive a restart without a full rescan.

The state lives in its own small DuckDB file beside the lake and records the lake snapshot it is
true at; after a restart only the snapshots since then are replayed from the change feed.

The anomaly models keep no state of their own here: they are rebuilt by replaying ``history()``
with the times a table's new level was accepted (``accepts``/``add_accept``). Those three methods
are the whole persisted interface of the models.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from lakewarden.signals.table_state import TableState, WriteRecord
from lakewarden.store.engine import STATE_ALIAS

_TABLES = f"{STATE_ALIAS}.main.table_state"
_META = f"{STATE_ALIAS}.main.meta"
_HISTORY = f"{STATE_ALIAS}.main.history"
_ACCEPTS = f"{STATE_ALIAS}.main.anomaly_accepts"
ACCEPTS_KEEP = 20  # per table: older accepts lie before the kept history anyway
HISTORY_KEEP = 5000  # writes per table kept for anomaly training (about 7 months of hourly loads)

log = logging.getLogger(__name__)


class StateStore:
    """The state database. Its cursor is used from request threads and the saver's: one
    lock around each use (a DuckDB cursor is not safe for concurrent use)."""

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._cur = cur
        self._lock = threading.Lock()
        cur.execute(f"CREATE TABLE IF NOT EXISTS {_TABLES} (name VARCHAR PRIMARY KEY, state JSON)")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {_META} (key VARCHAR PRIMARY KEY, value VARCHAR)")
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {_HISTORY} (name VARCHAR, time DOUBLE, "
            "rows_added BIGINT, rows_removed BIGINT, writer VARCHAR, snapshot_id BIGINT)"
        )
        cur.execute(f"CREATE TABLE IF NOT EXISTS {_ACCEPTS} (name VARCHAR, time DOUBLE)")

    def accepts(self, name: str) -> list[float]:
        """When the table's anomalous level was accepted as its new normal, oldest first."""
        with self._lock:
            rows = self._cur.execute(
                f"SELECT time FROM {_ACCEPTS} WHERE name = ? "
                f"ORDER BY time DESC LIMIT {ACCEPTS_KEEP}",
                [name],
            ).fetchall()
        return sorted(t for (t,) in rows)

    def add_accept(self, name: str, at: float) -> None:
        with self._lock:
            self._cur.execute(f"INSERT INTO {_ACCEPTS} VALUES (?, ?)", [name, at])

    def load(self) -> tuple[dict[str, TableState], int | None]:
        """All table states and the snapshot they are true at (None: no state yet)."""
        tables = {
            name: TableState.from_json(text)
            for name, text in self._cur.execute(f"SELECT name, state FROM {_TABLES}").fetchall()
        }
        rows = self._cur.execute(f"SELECT value FROM {_META} WHERE key = 'snapshot_id'").fetchall()
        return tables, (int(rows[0][0]) if rows else None)

    def history(self) -> dict[str, list[WriteRecord]]:
        """The recent writes of every table, oldest first."""
        rows = self._cur.execute(
            f"SELECT name, time, rows_added, rows_removed, writer, snapshot_id FROM ("
            f"  SELECT *, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS n "
            f"  FROM {_HISTORY}) WHERE n <= {HISTORY_KEEP} ORDER BY name, time"
        ).fetchall()
        out: dict[str, list[WriteRecord]] = {}
        for name, *rest in rows:
            out.setdefault(name, []).append(WriteRecord(*rest))
        return out

    def prune_history(self) -> None:
        """Keep the newest ``HISTORY_KEEP`` writes of each table."""
        self._cur.execute(
            f"DELETE FROM {_HISTORY} WHERE (name, time) IN (SELECT name, time FROM ("
            f"  SELECT name, time, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS n"
            f"  FROM {_HISTORY}) WHERE n > {HISTORY_KEEP})"
        )

    def save(
        self,
        changed: list[TableState],
        removed: list[str],
        snapshot_id: int | None,
        writes: Sequence[tuple[str, WriteRecord]] = (),
    ) -> None:
        """Write the changed tables, their new writes and the snapshot mark in one transaction."""
        with self._lock:
            self._write(changed, removed, snapshot_id, writes)

    def _write(
        self,
        changed: Sequence[TableState],
        removed: Sequence[str],
        snapshot_id: int | None,
        writes: Sequence[tuple[str, WriteRecord]],
    ) -> None:
        cur = self._cur
        cur.begin()
        try:
            for name in removed:
                cur.execute(f"DELETE FROM {_TABLES} WHERE name = ?", [name])
                cur.execute(f"DELETE FROM {_HISTORY} WHERE name = ?", [name])
                cur.execute(f"DELETE FROM {_ACCEPTS} WHERE name = ?", [name])
            if writes:
                cur.executemany(
                    f"INSERT INTO {_HISTORY} VALUES (?, ?, ?, ?, ?, ?)",
                    [[name, *w] for name, w in writes],
                )
            if changed:
                cur.executemany(
                    f"INSERT OR REPLACE INTO {_TABLES} VALUES (?, ?)",
                    [[s.name, s.to_json()] for s in changed],
                )
            if snapshot_id is not None:
                cur.execute(
                    f"INSERT OR REPLACE INTO {_META} VALUES ('snapshot_id', ?)", [str(snapshot_id)]
                )
            cur.commit()
        except BaseException:
            cur.rollback()
            raise


@dataclass
class _Batch:
    """Changes not saved yet, merged: the last state of each table wins, a removal clears
    what came before it, and the snapshot mark is the newest."""

    states: dict[str, TableState] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    writes: list[tuple[str, WriteRecord]] = field(default_factory=list)
    snapshot_id: int | None = None

    def add(
        self,
        changed: Sequence[TableState],
        removed: Sequence[str],
        snapshot_id: int | None,
        writes: Sequence[tuple[str, WriteRecord]],
    ) -> None:
        for name in removed:
            self.states.pop(name, None)
            self.removed.add(name)
            self.writes = [w for w in self.writes if w[0] != name]
        self.writes.extend(writes)
        for state in changed:
            self.states[state.name] = state
        if snapshot_id is not None:
            self.snapshot_id = snapshot_id

    def merge(self, later: _Batch) -> None:
        self.add(
            list(later.states.values()), sorted(later.removed), later.snapshot_id, later.writes
        )

    def __bool__(self) -> bool:
        return bool(self.states or self.removed or self.writes or self.snapshot_id is not None)


class WriteBehind:
    """Saves table state off the commit path: changes are merged in memory and written by a
    thread of their own at most ``delay_s`` after the first of them.

    The saved state is a cache of what the lake's change feed says, marked with the snapshot
    it is true at; state not saved yet when the process dies is replayed from the change feed
    at the next start, so losing it loses nothing. A failed save keeps its changes for the
    next attempt (a newer mark must never be saved without the older changes under it).
    """

    def __init__(self, store: StateStore, delay_s: float) -> None:
        self.store = store
        self._delay = delay_s
        self._pending = _Batch()
        self._cond = threading.Condition()
        self._saving = threading.Lock()  # one save at a time, in order
        self._closed = False
        self._thread: threading.Thread | None = None

    def save(
        self,
        changed: Sequence[TableState],
        removed: Sequence[str],
        snapshot_id: int | None,
        writes: Sequence[tuple[str, WriteRecord]] = (),
    ) -> None:
        with self._cond:
            self._pending.add(changed, removed, snapshot_id, writes)
            later = self._delay > 0 and not self._closed
            if later:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="lakewarden-state-saver", daemon=True
                    )
                    self._thread.start()
                self._cond.notify()
        if not later:
            self.flush()

    def flush(self) -> None:
        """Save what is pending, now."""
        with self._saving:
            with self._cond:
                batch, self._pending = self._pending, _Batch()
            if not batch:
                return
            try:
                self.store.save(
                    list(batch.states.values()),
                    sorted(batch.removed),
                    batch.snapshot_id,
                    batch.writes,
                )
            except Exception:
                log.exception("could not save table state; retrying with the next changes")
                with self._cond:
                    batch.merge(self._pending)
                    self._pending = batch

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            # Changes that arrive meanwhile join this save: one transaction per delay.
            with self._cond:
                self._cond.wait_for(lambda: self._closed, timeout=self._delay)
                if self._closed:
                    return
            self.flush()
