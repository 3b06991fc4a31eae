"""Keeps every table's signals current: after each governed write, and for any other commit.

A write through a session is queued in commit order while it still holds the write lock, then
applied after the lock is released: from the delta measured before it committed (an insert-only
write: its staged rows), else from the change feed of its own snapshot. Whichever committer
takes the tracker first applies every queued commit in order, so a write's signals are exact
and in order without holding the lock other writers wait on. Commits made elsewhere (another
process, a restart gap) are replayed snapshot by snapshot from the change feed, each attributed
to its author. DDL and missing or stale state re-base a table with one aggregate query. State is
saved write-behind (:class:`lakewarden.store.state.WriteBehind`): after a crash the change feed
replays what was not saved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from lakewarden.analysis.names import is_internal, normalize
from lakewarden.signals import delta as deltas
from lakewarden.signals.schema import diff
from lakewarden.signals.table_state import ColumnState, TableState, WriteRecord
from lakewarden.signals.update import TableSignals
from lakewarden.store import catalog
from lakewarden.store.engine import Engine
from lakewarden.store.snapshot_watch import SnapshotWatch
from lakewarden.store.state import HISTORY_KEEP, StateStore, WriteBehind
from lakewarden.store.transaction import Commit, Transaction

log = logging.getLogger(__name__)

# Change-map keys of a DuckLake snapshot that change a table's shape: the table is re-profiled.
_SHAPE_KEYS = ("tables_created", "tables_altered", "tables_dropped")
# Change-map keys that only add rows: the cheaper insertion feed gives the whole delta.
_INSERT_KEYS = ("tables_inserted_into", "inlined_insert")
# Change-map keys that change data and nothing the engine binds against; any other key (a
# table, view, macro or schema created, altered or dropped) may change a statement's plan.
_DATA_KEYS = (
    *_INSERT_KEYS,
    "tables_deleted_from",
    "inlined_delete",
    "tables_compacted",
    "merge_adjacent",
)
# Replaying more snapshots than this after a restart costs more than re-profiling every table.
MAX_REPLAY = 500
_RUN = 256  # most commits one change-feed query covers when replaying others' commits
# Signals of the newest snapshots applied, for a committer whose commit another thread applied.
_RECENT = 1024


@dataclass
class Pending:
    """A commit of this process, queued in commit order until its signals are applied."""

    commit: Commit
    tables: tuple[str, ...]
    writer: str
    shape_changed: bool
    insert_only: frozenset[str]
    staged: dict[str, deltas.Delta]  # insert-only tables measured before the commit
    snapshot_id: int | None = None
    signals: dict[str, TableSignals] = field(default_factory=dict)


class Tracker:
    def __init__(
        self,
        engine: Engine,
        event_time: Callable[[str], str | None],
        timer: Callable[[str, float], None] = lambda signal, seconds: None,
        on_reshape: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._event_time = event_time
        self._timer = timer
        self._on_reshape = on_reshape  # a commit changed what statements bind against
        self._lock = threading.RLock()
        self._cur = engine.cursor()
        self._store = StateStore.of(engine)
        self.states, self.snapshot_id = self._store.load()
        # Says when a poll may skip asking the catalog for its newest snapshot: see sync().
        self.watch = SnapshotWatch(engine.location.catalog_files)
        self._store.prune_history()
        self._saver = WriteBehind(self._store, engine.settings.state_save_delay_ms / 1000)
        # Commits of this process not applied yet, in commit order; its own small lock, so a
        # committer holding the write lock never waits for another's post-commit work.
        self._queue: deque[Pending] = deque()
        self._queue_lock = threading.Lock()
        self._recent: OrderedDict[int, dict[str, TableSignals]] = OrderedDict()
        self.history: dict[str, list[WriteRecord]] = self._store.history()
        # Writes remembered per table since this process started (the loaded history included):
        # lets a reader pick up only what is new, although the list is trimmed from the front.
        self.appended: dict[str, int] = {name: len(w) for name, w in self.history.items()}
        # Bumped by every write remembered or table dropped: a reader that saw this number has
        # seen every table's writes.
        self.generation = 0
        self._new_writes: list[tuple[str, WriteRecord]] = []

    # -- reading -------------------------------------------------------------------------

    def tables(self) -> list[TableState]:
        with self._lock:
            return list(self.states.values())

    def get(self, name: str) -> TableState | None:
        # States are immutable and replaced whole (one dict store, atomic), so a reader needs
        # no lock: a committer holding the write lock never waits here for a drain.
        return self.states.get(name)

    def writes(self, name: str) -> list[WriteRecord]:
        """The table's recent writes, oldest first (what anomaly scores train on)."""
        with self._lock:
            return list(self.history.get(name, ()))

    def writes_since(self, name: str, seen: int) -> tuple[int, list[WriteRecord]] | None:
        """(count, writes) remembered after the first ``seen``; None when some of them were
        already trimmed or the table was dropped (the reader starts over from :meth:`writes`)."""
        with self._lock:
            total = self.appended.get(name, 0)
            writes = self.history.get(name, [])
            new = total - seen
            if new < 0 or new > len(writes):
                return None
            return total, writes[len(writes) - new :] if new else []

    def anomaly_accepts(self, name: str) -> list[float]:
        """When the table's current anomalous level was accepted as normal (oldest first)."""
        with self._lock:
            return self._store.accepts(name)

    def accept_anomaly(self, name: str, at: float) -> None:
        with self._lock:
            self._store.add_accept(name, at)

    # -- bringing state up to date ---------------------------------------------------------

    def sync(self, *, poll: bool = False) -> dict[str, TableSignals]:
        """Catch up with everything committed since the state was last true.

        ``poll`` (the monitor's clock): ask the catalog for its newest snapshot only when its
        files say something may have been committed since it last answered. Measured on 2 busy
        cores: that query is ~3.1 ms of an idle ``Monitor.tick()`` over 100 tables (~6.3 ms),
        stat-ing the catalog's files ~2 us each. A commit of another process writes those files
        and is seen at the next poll as before; where the files' attributes do not show it (a
        network file system caching them, a clock jump) within a minute at worst (see
        :mod:`lakewarden.store.snapshot_watch`). This process's commits make the next poll ask
        (:meth:`enqueue`); a raw one on the engine's connection writes the files like any other.
        """
        with self._lock:
            self._drain()
            if not self._engine.location.is_lake:
                return self._sync_file()
            look = self.watch.look(force=not poll or self.snapshot_id is None)
            if look is None:
                return self._rebase_stale()
            current = catalog.current_snapshot(self._cur)
            known = self.snapshot_id
            if known is None or current - known > MAX_REPLAY:
                updates = self._rebase_all(current)
            else:
                updates = {}
                # DuckLake's snapshots() lists the lake's whole history before any filter
                # applies (~25 us per snapshot): skip it when nothing was committed.
                if current != self.snapshot_id:
                    updates.update(self._replay(catalog.snapshots(self._cur, since=known)))
                updates.update(self._rebase_stale())
            self.watch.confirm(look)
            return updates

    def invalidate(self) -> None:
        """Forget what is known to be true: the next sync re-bases every table."""
        with self._lock:
            self.snapshot_id = None

    def stage(self, tx: Transaction) -> dict[str, deltas.Delta]:
        """Measure, before ``tx`` commits, what it inserted into tables it only inserted into
        (the rows are known before the commit; the change feed is a query after it)."""
        out = {}
        for name in tx.insert_only:
            delta = tx.staged(name)
            if delta is not None and name in self.states:
                out[name] = delta
        return out

    def enqueue(
        self,
        commit: Commit,
        tables: tuple[str, ...],
        writer: str,
        shape_changed: bool,
        *,
        insert_only: frozenset[str] = frozenset(),
        staged: dict[str, deltas.Delta] | None = None,
    ) -> Pending:
        """Note a commit of this process in commit order; call with the write lock held."""
        pending = Pending(commit, tables, writer, shape_changed, insert_only, staged or {})
        with self._queue_lock:
            self._queue.append(pending)
        self.watch.invalidate()
        return pending

    def settle(self, pending: Pending | None = None) -> tuple[int | None, dict[str, TableSignals]]:
        """Apply every queued commit in commit order; the snapshot id and signals of
        ``pending``. The quality gate settles first, to judge the state it commits on."""
        with self._lock:
            self._drain()
        if pending is None:
            return None, {}
        return pending.snapshot_id, pending.signals

    def close(self) -> None:
        """Save what is not saved yet."""
        self._saver.close()

    def _drain(self) -> None:
        """Apply every queued commit, oldest first (called with the tracker's lock)."""
        with self._queue_lock:
            queued, self._queue = list(self._queue), deque()
        listing: dict[str, catalog.Snapshot] = {}
        for item in queued:
            item.snapshot_id = item.commit.snapshot_id
            try:
                if not self._engine.location.is_lake:
                    item.signals = self._reprofile(item.tables, item.writer, item.commit.time, None)
                    continue
                if item.snapshot_id is not None and not item.commit.certain:
                    item.snapshot_id = self._find(item, listing)
                if item.snapshot_id is not None:
                    item.signals = self._settle(item, item.snapshot_id)
            except Exception:
                # The write is committed and acknowledged whatever happens here; the state
                # may hold part of it, so every table is re-based at the next sync.
                log.exception("could not measure commit %s of %s", item.snapshot_id, item.writer)
                self.snapshot_id = None

    def _find(self, item: Pending, listing: dict[str, catalog.Snapshot]) -> int | None:
        """The snapshot a commit made, where another process may have committed first: the
        lake's own list says which is ours (by commit id). One list serves a whole drain."""
        if item.commit.commit_id not in listing:
            predicted = item.commit.snapshot_id or 1
            since = min(self.snapshot_id or predicted - 1, predicted - 1)
            listing.update(
                (s.commit_id, s) for s in catalog.snapshots(self._cur, since=since) if s.commit_id
            )
        found = listing.get(item.commit.commit_id)
        return found.snapshot_id if found is not None else None

    def _settle(self, item: Pending, sid: int) -> dict[str, TableSignals]:
        if self.snapshot_id is None:
            self._rebase_all(catalog.current_snapshot(self._cur))
        known = self.snapshot_id or 0
        if sid <= known:
            # Applied already, by a sync that found it in the lake first.
            done = self._recent.get(sid, {})
            return {t: done[t] for t in item.tables if t in done}
        if sid > known + 1:  # commits of others first, in order
            others = [s for s in catalog.snapshots(self._cur, since=known) if s.snapshot_id < sid]
            self._replay(others)
        return self._apply_own(item, sid)

    def _apply_own(self, item: Pending, sid: int) -> dict[str, TableSignals]:
        when = item.commit.time
        if item.shape_changed:
            updates = self._reprofile(item.tables, item.writer, when, sid, save=False)
        else:
            updates = {}
            for name in item.tables:
                if name not in self.states:
                    continue
                staged = item.staged.get(name)
                if staged is not None:
                    updates[name] = self._apply(name, staged, sid, item.writer, when)
                else:
                    updates[name] = self._apply_delta(
                        name, sid, sid, item.writer, when, inserts_only=name in item.insert_only
                    )
        self._save(updates, sid)
        self._remember_signals(sid, updates)
        return updates

    def _remember_signals(self, snapshot_id: int, updates: dict[str, TableSignals]) -> None:
        self._recent[snapshot_id] = updates
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    # -- internals ---------------------------------------------------------------------------

    def _replay(self, snaps: Sequence[catalog.Snapshot]) -> dict[str, TableSignals]:
        """Apply commits of others, in order. Runs of commits that only changed rows of known
        tables read each table's change feed once for the whole run and split it by snapshot:
        a sidecar of a fleet replays every other sidecar's commits, and one feed query per
        commit (~5 ms, and ~3 ms more to map table ids, on a PostgreSQL catalog) made that cost
        grow with the fleet."""
        updates: dict[str, TableSignals] = {}
        i = 0
        while i < len(snaps):
            run = [snaps[i]]
            while (
                self._rows_only(run[-1])
                and i + len(run) < len(snaps)
                and len(run) < _RUN
                and self._rows_only(snaps[i + len(run)])
            ):
                run.append(snaps[i + len(run)])
            if len(run) > 1:
                updates.update(self._apply_run(run))
            else:
                updates.update(self._apply_snapshot(run[0]))
            i += len(run)
        return updates

    @staticmethod
    def _rows_only(snap: catalog.Snapshot) -> bool:
        return bool(snap.changes) and all(
            key in _DATA_KEYS and key.startswith(("tables_", "inlined_")) for key in snap.changes
        )

    def _apply_run(self, run: Sequence[catalog.Snapshot]) -> dict[str, TableSignals]:
        """Apply consecutive commits that only changed rows: per touched table one change
        feed over the run, split by snapshot, applied snapshot by snapshot."""
        ids = catalog.table_ids(self._cur)
        touched: list[tuple[catalog.Snapshot, set[str]]] = []
        for snap in run:
            names = {
                normalize(n)
                for key, values in snap.changes.items()
                for n in (ids.get(v, "") for v in values)
                if n and not is_internal(n)
            }
            touched.append((snap, names))
        tables = set().union(*(names for _, names in touched))
        if any(name not in self.states for name in tables):
            # A table this process does not know yet: snapshot by snapshot, which profiles it.
            out: dict[str, TableSignals] = {}
            for snap in run:
                out.update(self._apply_snapshot(snap))
            return out
        parts: dict[str, dict[int, pl.DataFrame]] = {}
        for name in tables:
            started = time.perf_counter()
            frame = catalog.changes(self._cur, name, run[0].snapshot_id, run[-1].snapshot_id)
            parts[name] = {
                int(key[0]): part
                for key, part in frame.partition_by("snapshot_id", as_dict=True).items()
            }
            self._timer("delta", time.perf_counter() - started)
        updates: dict[str, TableSignals] = {}
        for snap, names in touched:
            writer, stamp = snap.agent or "unknown", snap.time.timestamp()
            done = {}
            for name in names:
                part = parts[name].get(snap.snapshot_id)
                event_time = self.states[name].event_time_column
                delta = (
                    deltas.from_changes(part, event_time) if part is not None else deltas.Delta()
                )
                done[name] = self._apply(name, delta, snap.snapshot_id, writer, stamp)
            self._save(done, snap.snapshot_id)
            self._remember_signals(snap.snapshot_id, done)
            updates.update(done)
        return updates

    def _apply_snapshot(self, snap: catalog.Snapshot) -> dict[str, TableSignals]:
        ids = catalog.table_ids(self._cur)
        touched: set[str] = set()
        reshaped: set[str] = set()
        removed: set[str] = set()  # tables with deleted or updated rows in this snapshot
        for key, values in snap.changes.items():
            if not key.startswith(("tables_", "inlined_")):
                continue
            names = [v if key == "tables_created" else ids.get(v, "") for v in values]
            names = [normalize(n) for n in names if n and not is_internal(n)]
            touched.update(names)
            if key in _SHAPE_KEYS:
                reshaped.update(names)
            if key not in _INSERT_KEYS:
                removed.update(names)
        if any(key not in _DATA_KEYS for key in snap.changes):
            self._on_reshape()
        writer = snap.agent or "unknown"
        stamp = snap.time.timestamp()
        updates: dict[str, TableSignals] = {}
        updates.update(
            self._reprofile(tuple(reshaped), writer, stamp, snap.snapshot_id, save=False)
        )
        for name in touched - reshaped:
            if name in self.states:
                updates[name] = self._apply_delta(
                    name,
                    snap.snapshot_id,
                    snap.snapshot_id,
                    writer,
                    stamp,
                    inserts_only=name not in removed,
                )
            else:
                updates.update(
                    self._reprofile((name,), writer, stamp, snap.snapshot_id, save=False)
                )
        self._save(updates, snap.snapshot_id)
        self._remember_signals(snap.snapshot_id, updates)
        return updates

    def _apply_delta(
        self,
        name: str,
        first: int,
        last: int,
        writer: str,
        stamp: float,
        *,
        inserts_only: bool = False,
    ) -> TableSignals:
        started = time.perf_counter()
        state = self.states[name]
        if inserts_only:
            frame = catalog.insertions(self._cur, name, first, last).with_columns(
                change_type=pl.lit("insert")
            )
        else:
            frame = catalog.changes(self._cur, name, first, last)
        delta = deltas.from_changes(frame, state.event_time_column)
        self._timer("delta", time.perf_counter() - started)
        return self._apply(name, delta, last, writer, stamp)

    def _apply(
        self, name: str, delta: deltas.Delta, snapshot_id: int, writer: str, stamp: float
    ) -> TableSignals:
        new = deltas.apply(
            self.states[name], delta, when=stamp, writer=writer, snapshot_id=snapshot_id
        )
        self.states[name] = new
        if delta.rows_written:
            self._remember(
                name,
                WriteRecord(
                    stamp, delta.inserted + delta.updated, delta.deleted, writer, snapshot_id
                ),
            )
        return TableSignals(new, delta)

    def _reprofile(
        self,
        tables: tuple[str, ...],
        writer: str | None,
        stamp: float,
        snapshot_id: int | None,
        *,
        save: bool = True,
    ) -> dict[str, TableSignals]:
        """Re-base ``tables`` from the catalog and one aggregate query each."""
        if not tables:
            return {}
        started = time.perf_counter()
        # On a lake, each table as it was at ``snapshot_id``: replaying a change of shape
        # followed by writes must not count those writes twice (once in the profile, once
        # as their own deltas).
        at = snapshot_id if self._engine.location.is_lake else None
        schemas = catalog.schemas(self._cur, self._engine.database)
        updates: dict[str, TableSignals] = {}
        for name in tables:
            old = self.states.get(name)
            schema = schemas.get(name)
            # Only base tables: DESCRIBE would describe a view by that name as well.
            if at is not None and (schema is not None or old is not None):
                schema = catalog.schema_at(self._cur, name, at)
            if schema is None:
                if old is not None:
                    del self.states[name]
                    updates[name] = TableSignals(old, dropped=True)
                continue
            new = self._profile(name, schema, old, snapshot_id)
            changes = tuple(diff(old.schema, new.schema)) if old else ()
            counts = dict(new.schema_changes)
            for change in changes:
                counts[change.change] = counts.get(change.change, 0) + 1
            before = old.rows if old else 0
            delta = deltas.Delta(
                inserted=max(0, new.rows - before), deleted=max(0, before - new.rows)
            )
            new = new.with_changes(
                schema_changes=counts,
                last_modified=stamp,
                last_writer=writer or (old.last_writer if old else None),
            )
            self.states[name] = new
            updates[name] = TableSignals(new, delta, changes)
            if writer is not None and delta.rows_written:
                self._remember(
                    name, WriteRecord(stamp, delta.inserted, delta.deleted, writer, snapshot_id)
                )
        self._timer("profile", time.perf_counter() - started)
        if save:
            self._save(updates, snapshot_id)
        return updates

    def _profile(
        self, name: str, schema: dict[str, str], old: TableState | None, snapshot_id: int | None
    ) -> TableState:
        event_time = self._event_time(name)
        at = snapshot_id if self._engine.location.is_lake else None
        prof = catalog.profile(self._cur, name, list(schema), event_time, at)
        base = old or TableState(name=name)
        return base.with_changes(
            rows=prof.rows,
            columns=tuple(ColumnState(c, t, prof.null_counts[c]) for c, t in schema.items()),
            event_time_column=event_time if event_time in schema else None,
            last_event_time=deltas.to_epoch(prof.max_event_time),
            snapshot_id=snapshot_id,
            profiled_at=time.time(),
        )

    def _rebase_all(self, current: int | None) -> dict[str, TableSignals]:
        schemas = catalog.schemas(self._cur, self._engine.database)
        names = tuple(set(schemas) | set(self.states))
        updates = self._reprofile(names, None, time.time(), current, save=False)
        for name, update in list(updates.items()):
            # A re-base is not a write: keep the last known writer and time when there is one.
            if not update.dropped:
                old = update.state
                last = _last_write(self._cur, name) if self._engine.location.is_lake else None
                if last is not None:
                    old = old.with_changes(last_modified=last[0], last_writer=last[1])
                self.states[name] = old
                updates[name] = TableSignals(old, update.delta, update.schema_changes)
        self._save(updates, current)
        return updates

    def _rebase_stale(self) -> dict[str, TableSignals]:
        max_age = self._engine.settings.profile_max_age_s
        now = time.time()
        stale = [
            s
            for s in self.states.values()
            if s.profiled_at is None
            or now - s.profiled_at > max_age
            or s.event_time_column != self._event_time(s.name)
        ]
        if not stale:
            return {}
        updates = {}
        for state in stale:
            schema = state.schema
            new = self._profile(state.name, schema, state, self.snapshot_id)
            self.states[state.name] = new
            updates[state.name] = TableSignals(new)
        self._save(updates, self.snapshot_id)
        return updates

    def _sync_file(self) -> dict[str, TableSignals]:
        """Plain DuckDB file: no change feed, so compare cheap metadata and re-profile changes."""
        schemas = catalog.schemas(self._cur, self._engine.database)
        sizes = catalog.estimated_rows(self._cur, self._engine.database)
        changed = tuple(
            name
            for name in set(schemas) | set(self.states)
            if name not in self.states
            or name not in schemas
            or self.states[name].schema != schemas[name]
            or self.states[name].rows != sizes.get(name)
        )
        return self._reprofile(changed, None, time.time(), None)

    def _remember(self, name: str, record: WriteRecord) -> None:
        writes = self.history.setdefault(name, [])
        writes.append(record)
        self.appended[name] = self.appended.get(name, 0) + 1
        self.generation += 1
        if len(writes) > HISTORY_KEEP:
            del writes[: len(writes) - HISTORY_KEEP]
        self._new_writes.append((name, record))

    def _save(self, updates: dict[str, TableSignals], snapshot_id: int | None) -> None:
        if snapshot_id is not None:
            self.snapshot_id = snapshot_id
        for name, update in updates.items():
            if update.dropped:
                self.history.pop(name, None)
                self.appended.pop(name, None)
                self.generation += 1
        writes, self._new_writes = self._new_writes, []
        self._saver.save(
            [u.state for u in updates.values() if not u.dropped],
            [n for n, u in updates.items() if u.dropped],
            self.snapshot_id,
            writes,
        )


def _last_write(cur: Any, name: str) -> tuple[float, str | None] | None:
    """Time and author of the newest snapshot that changed ``name`` (for a re-base)."""
    ids = {v: k for k, v in catalog.table_ids(cur).items()}
    tid = ids.get(name)
    for snap in catalog.snapshots(cur, limit=MAX_REPLAY):
        for key, values in snap.changes.items():
            created = key == "tables_created" and name in {normalize(v) for v in values}
            if created or (tid is not None and tid in values):
                return snap.time.timestamp(), snap.agent
    return None
