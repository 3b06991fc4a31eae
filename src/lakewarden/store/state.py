"""Persisted table state, so signals and metrics survive a restart without a full rescan.

The state lives in its own small DuckDB file beside the lake and records the lake snapshot it is
true at; after a restart only the snapshots since then are replayed from the change feed.

On a lake whose catalog is PostgreSQL the state lives in that database (schema ``lakewarden``),
shared by every sidecar of the lake: a sidecar starting on a fresh machine loads it and replays
only the snapshots after it. Each sidecar applies every commit of the lake (its own and, through
the change feed, the others'), so any two hold the same state of a table at the same snapshot;
a save keeps the newer of the stored and the saved state of each table (saves take a lock of
their own in turn), write history is keyed by snapshot so the same write saved by two sidecars
is one row (the second finds it there), and the mark is the newest snapshot any of them saved.

The anomaly models keep no state of their own here: they are rebuilt by replaying ``history()``
with the times a table's new level was accepted (``accepts``/``add_accept``). Those three methods
are the whole persisted interface of the models.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from lakewarden.signals.table_state import TableState, WriteRecord
from lakewarden.store.engine import CATALOG_ALIAS, SHARED_SCHEMA, Engine
from lakewarden.store.writelock import STATE_LOCK_KEY

_SHARED = SHARED_SCHEMA  # the schema, as PostgreSQL names it
ACCEPTS_KEEP = 20  # per table: older accepts lie before the kept history anyway
HISTORY_KEEP = 5000  # writes per table kept for anomaly training (about 7 months of hourly loads)

log = logging.getLogger(__name__)


class StateStore:
    """The state database. Its cursor is used from request threads and the saver's: one
    lock around each use (a DuckDB cursor is not safe for concurrent use)."""

    def __init__(
        self,
        cur: duckdb.DuckDBPyConnection,
        schema: str,
        *,
        shared: bool = False,
        catalog: str = "",
    ) -> None:
        """``schema`` holds the tables; ``shared`` when other sidecars use them too, through
        ``catalog`` (the attached PostgreSQL database whose advisory lock orders the saves)."""
        self._cur = cur
        self._lock = threading.Lock()
        self._shared = shared
        self._catalog = catalog
        self._tables = f"{schema}.table_state"
        self._meta = f"{schema}.meta"
        self._history = f"{schema}.history"
        self._accepts = f"{schema}.anomaly_accepts"
        if shared:
            # PostgreSQL's own DDL, in one script under the state's lock: sidecars starting at
            # the same moment race IF NOT EXISTS otherwise.
            self._script(
                [
                    f"CREATE SCHEMA IF NOT EXISTS {_SHARED}",
                    f"CREATE TABLE IF NOT EXISTS {_SHARED}.table_state (name text PRIMARY KEY, "
                    "state text NOT NULL, snapshot_id bigint)",
                    f"CREATE TABLE IF NOT EXISTS {_SHARED}.meta (key text PRIMARY KEY, value text)",
                    f"CREATE TABLE IF NOT EXISTS {_SHARED}.history (name text, time double "
                    "precision, rows_added bigint, rows_removed bigint, writer text, snapshot_id "
                    "bigint, PRIMARY KEY (name, snapshot_id))",
                    f"CREATE TABLE IF NOT EXISTS {_SHARED}.anomaly_accepts (name text, time "
                    "double precision)",
                    # The audit log's refusal records (store/audit.py), made here under the
                    # lock too.
                    f"CREATE TABLE IF NOT EXISTS {_SHARED}.refusals (time timestamptz, agent "
                    "text, decision text, operation text, summary text, statement_hash text, "
                    "tables text[], violations text, trace_id text, span_id text, commit_id text)",
                ]
            )
            return
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self._tables} (name VARCHAR PRIMARY KEY, state JSON)"
        )
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self._meta} (key VARCHAR PRIMARY KEY, value VARCHAR)"
        )
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self._history} (name VARCHAR, time DOUBLE, "
            "rows_added BIGINT, rows_removed BIGINT, writer VARCHAR, snapshot_id BIGINT)"
        )
        cur.execute(f"CREATE TABLE IF NOT EXISTS {self._accepts} (name VARCHAR, time DOUBLE)")

    @classmethod
    def of(cls, engine: Engine) -> StateStore:
        """The state store of ``engine``'s lake: shared in its catalog database, or its own."""
        return cls(
            engine.state_cursor(),
            engine.state_schema,
            shared=engine.state_shared,
            catalog=CATALOG_ALIAS,
        )

    def _script(self, statements: Sequence[str]) -> None:
        """Run PostgreSQL statements in the catalog database as one transaction, after the
        state's advisory lock, in READ COMMITTED: each statement sees what another sidecar
        committed before the lock was granted.

        The postgres extension sends the script after its own ``BEGIN TRANSACTION ISOLATION
        LEVEL REPEATABLE READ``, whose snapshot the lock's SELECT would take before the lock
        wait: a row another sidecar saved meanwhile then failed the update with "could not
        serialize access" (two sidecars saving one table, tests/test_postgres_catalog.py).
        No query has run before the script's first statement, so it may still set the level."""
        script = "; ".join(
            [
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
                "SET LOCAL standard_conforming_strings = on",
                f"SELECT pg_advisory_xact_lock({STATE_LOCK_KEY})",
                *statements,
            ]
        )
        self._cur.execute("CALL postgres_execute(?, ?)", [self._catalog, script])

    def accepts(self, name: str) -> list[float]:
        """When the table's anomalous level was accepted as its new normal, oldest first."""
        with self._lock:
            rows = self._cur.execute(
                f"SELECT time FROM {self._accepts} WHERE name = ? "
                f"ORDER BY time DESC LIMIT {ACCEPTS_KEEP}",
                [name],
            ).fetchall()
        return sorted(t for (t,) in rows)

    def add_accept(self, name: str, at: float) -> None:
        with self._lock:
            self._cur.execute(f"INSERT INTO {self._accepts} VALUES (?, ?)", [name, at])

    def load(self) -> tuple[dict[str, TableState], int | None]:
        """All table states and the snapshot they are true at (None: no state yet).

        Both read in one transaction: on shared state another sidecar may save between two
        reads, and a mark newer than the states under it would skip commits they lack."""
        cur = self._cur
        cur.begin()
        try:
            tables = {
                name: TableState.from_json(text)
                for name, text in cur.execute(f"SELECT name, state FROM {self._tables}").fetchall()
            }
            rows = cur.execute(
                f"SELECT value FROM {self._meta} WHERE key = 'snapshot_id'"
            ).fetchall()
        finally:
            cur.rollback()
        return tables, (int(rows[0][0]) if rows else None)

    def history(self) -> dict[str, list[WriteRecord]]:
        """The recent writes of every table, oldest first."""
        rows = self._cur.execute(
            f"SELECT name, time, rows_added, rows_removed, writer, snapshot_id FROM ("
            f"  SELECT *, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS n "
            f"  FROM {self._history}) WHERE n <= {HISTORY_KEEP} ORDER BY name, time"
        ).fetchall()
        out: dict[str, list[WriteRecord]] = {}
        for name, *rest in rows:
            out.setdefault(name, []).append(WriteRecord(*rest))
        return out

    def prune_history(self) -> None:
        """Keep the newest ``HISTORY_KEEP`` writes of each table."""
        self._cur.execute(
            f"DELETE FROM {self._history} WHERE (name, time) IN (SELECT name, time FROM ("
            f"  SELECT name, time, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS n"
            f"  FROM {self._history}) WHERE n > {HISTORY_KEEP})"
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
        if self._shared:
            self._script(_shared_save(changed, removed, snapshot_id, writes))
            return
        cur = self._cur
        cur.begin()
        try:
            for name in removed:
                cur.execute(f"DELETE FROM {self._tables} WHERE name = ?", [name])
                cur.execute(f"DELETE FROM {self._history} WHERE name = ?", [name])
                cur.execute(f"DELETE FROM {self._accepts} WHERE name = ?", [name])
            if writes:
                cur.executemany(
                    f"INSERT INTO {self._history} VALUES (?, ?, ?, ?, ?, ?)",
                    [[name, *w] for name, w in writes],
                )
            if changed:
                cur.executemany(
                    f"INSERT OR REPLACE INTO {self._tables} VALUES (?, ?)",
                    [[s.name, s.to_json()] for s in changed],
                )
            if snapshot_id is not None:
                cur.execute(
                    f"INSERT OR REPLACE INTO {self._meta} VALUES ('snapshot_id', ?)",
                    [str(snapshot_id)],
                )
            cur.commit()
        except BaseException:
            # A failed commit (a full device) has ended the transaction already: rolling it
            # back again would raise over the reason.
            with contextlib.suppress(duckdb.Error):
                cur.rollback()
            raise


def _shared_save(
    changed: Sequence[TableState],
    removed: Sequence[str],
    snapshot_id: int | None,
    writes: Sequence[tuple[str, WriteRecord]],
) -> list[str]:
    """A save as PostgreSQL statements: a table's state replaces the stored one only when it is
    true at the same or a later snapshot, a write another sidecar saved already is skipped, and
    the mark only moves forward. Values are literals (postgres_execute binds no parameters):
    text through :func:`_text`, numbers formatted from Python numbers."""
    out = []
    for name in removed:
        for table in ("table_state", "history", "anomaly_accepts"):
            out.append(f"DELETE FROM {_SHARED}.{table} WHERE name = {_text(name)}")
    if writes:
        rows = ", ".join(
            f"({_text(name)}, {_number(w.time)}, {_number(w.rows_added)}, "
            f"{_number(w.rows_removed)}, {_text(w.writer)}, {_number(w.snapshot_id)})"
            for name, w in writes
        )
        out.append(f"INSERT INTO {_SHARED}.history VALUES {rows} ON CONFLICT DO NOTHING")
    for state in changed:
        out.append(
            f"INSERT INTO {_SHARED}.table_state VALUES ({_text(state.name)}, "
            f"{_text(state.to_json())}, {_number(state.snapshot_id)}) ON CONFLICT (name) DO "
            "UPDATE SET state = EXCLUDED.state, snapshot_id = EXCLUDED.snapshot_id WHERE "
            f"{_SHARED}.table_state.snapshot_id IS NULL OR EXCLUDED.snapshot_id IS NULL OR "
            f"{_SHARED}.table_state.snapshot_id <= EXCLUDED.snapshot_id"
        )
    if snapshot_id is not None:
        out.append(
            f"INSERT INTO {_SHARED}.meta VALUES ('snapshot_id', {_text(str(int(snapshot_id)))}) "
            f"ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value WHERE "
            f"{_SHARED}.meta.value::bigint <= EXCLUDED.value::bigint"
        )
    return out


def _text(value: str | None) -> str:
    """A PostgreSQL string literal (standard_conforming_strings is on in the script), or NULL."""
    if value is None:
        return "NULL"
    if "\x00" in value:
        raise ValueError("a NUL character cannot be stored in PostgreSQL text")
    return "'" + value.replace("'", "''") + "'"


def _number(value: float | int | None) -> str:
    if value is None:
        return "NULL"
    number = float(value) if isinstance(value, float) else int(value)
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{number} cannot be stored")
    return repr(number)


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
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.exception(
                    "could not save table state (%s); retrying with the next changes", first
                )
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
