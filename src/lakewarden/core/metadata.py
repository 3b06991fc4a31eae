"""What agents and operators may learn about the lake: tables, signals, snapshots, audit.

Metadata follows the data: with ``agent`` given, only tables its read grants cover exist, and a
table it may not read is "not found" in the very words of a missing one, so the answer tells
nothing about what the agent cannot see. ``agent=None`` is the operator (CLI, an application
holding the SDK): everything.
"""

from __future__ import annotations

import threading
from typing import Any

from lakewarden.analysis.names import is_internal, normalize
from lakewarden.core.health import Health
from lakewarden.core.stages import Stages
from lakewarden.errors import NotFound
from lakewarden.signals.table_state import TableState
from lakewarden.store import audit, catalog


class Metadata:
    def __init__(self, stages: Stages, health: Health) -> None:
        self._stages = stages
        self._health = health
        # Listing snapshots reads the catalog on a cursor of its own: one listing at a time,
        # and no agent's session waits for it.
        self._listing = threading.Lock()

    def tables(self, agent: str | None = None) -> list[TableState]:
        grants = self._stages.grants
        states = (t for t in self._stages.tracker.tables() if grants.can_see(agent, t.name))
        return sorted(states, key=lambda t: t.name)

    def table(self, name: str, agent: str | None = None) -> TableState:
        state = self._stages.tracker.get(normalize(name))
        if state is None or not self._stages.grants.can_see(agent, state.name):
            raise NotFound(
                f"table {name!r} does not exist in this lake "
                "(name it schema.table, or just table in schema main)"
            )
        return state

    def describe(self, name: str, agent: str | None = None) -> dict[str, Any]:
        """A table's schema and signals, with the state of each of its contract checks."""
        state = self.table(name, agent)
        out = state.summary()
        out["checks"] = [f.to_dict() for f in self._health.checks(state.name).get(state.name, [])]
        out["monitors"] = {
            signal: m.to_dict()
            for signal, m in self._health.monitored().get(state.name, {}).items()
        }
        return out

    def audit(
        self, agent: str | None = None, limit: int = 100, *, caller: str | None = None
    ) -> list[dict[str, Any]]:
        """Audit records, newest first; a ``caller`` that is not an admin sees only its own."""
        if caller is not None:
            agent = self._stages.grants.audit_scope(caller, agent)
        return self._stages.audit.read(agent, limit)

    def snapshots(
        self, table: str | None = None, limit: int = 50, agent: str | None = None
    ) -> list[catalog.Snapshot]:
        """Snapshots newest first, optionally only those that changed ``table``; for ``agent``,
        only snapshots whose every changed table it may read."""
        if table is not None and agent is not None:
            self.table(table, agent)  # NotFound for a table that never was, or is not its to see
        engine = self._stages.engine
        if not engine.location.is_lake:
            return []
        everything = agent is None or self._stages.grants.is_admin(agent)
        with self._listing:
            cur = engine.cursor()
            try:
                names = catalog.table_ids(cur)

                def visible(snap: catalog.Snapshot) -> bool:
                    # lakewarden's own bookkeeping commits (audit of refusals) are not news
                    return snap.agent != audit.AUTHOR and (
                        everything or self._visible(str(agent), snap, names)
                    )

                if table is None:
                    rows = self._rows_by_snapshot(None)
                    history = (
                        catalog.snapshots(cur, limit=limit * 2 + 10)
                        if everything
                        else catalog.snapshots(cur)
                    )
                    found = [s for s in history if visible(s)][:limit]
                    return [_with_rows(s.described(names), rows) for s in found]
                name = normalize(table)
                rows = self._rows_by_snapshot(name)
                ids = {k for k, v in names.items() if v == name}
                out = []
                for snap in catalog.snapshots(cur):
                    if not everything and not self._visible(str(agent), snap, names):
                        continue  # it also changed a table the agent may not read
                    if any(
                        (key == "tables_created" and name in map(normalize, values))
                        or ids.intersection(values)
                        for key, values in snap.changes.items()
                    ):
                        out.append(
                            snap.described(names).with_rows(*rows.get(snap.snapshot_id, (0, 0)))
                        )
                        if len(out) >= limit:
                            break
                return out
            finally:
                cur.close()

    def _rows_by_snapshot(self, table: str | None) -> dict[int, tuple[int, int]]:
        """Rows added and removed per snapshot, over one table or all, from the write history."""
        tracker = self._stages.tracker
        out: dict[int, tuple[int, int]] = {}
        states = tracker.tables() if table is None else [tracker.get(table)]
        for state in states:
            if state is None:
                continue
            for w in tracker.writes(state.name):
                if w.snapshot_id is None:
                    continue
                added, removed = out.get(w.snapshot_id, (0, 0))
                out[w.snapshot_id] = (added + w.rows_added, removed + w.rows_removed)
        return out

    def _visible(self, agent: str, snap: catalog.Snapshot, names: dict[str, str]) -> bool:
        for key, values in snap.changes.items():
            if key.startswith("schemas_"):
                continue  # schemas created or dropped name no table
            for value in values:
                # "tables_created" (and "views_created") list names; every other kind of change
                # (inserts, inlined inserts, deletes, drops, alters, ...) lists table ids. What
                # cannot be named is hidden rather than guessed at.
                table = normalize(value) if key.endswith("_created") else names.get(str(value))
                if table is not None and is_internal(table):
                    continue  # every governed commit writes its audit records along with it
                if table is None or not self._stages.grants.can_see(agent, table):
                    return False
        return True


def _with_rows(snap: catalog.Snapshot, rows: dict[int, tuple[int, int]]) -> catalog.Snapshot:
    """The snapshot with its rows added and removed: 0/0 when it wrote no rows (DDL); unknown
    when it did but the bounded write history no longer holds it."""
    known = rows.get(snap.snapshot_id)
    if known is not None:
        return snap.with_rows(*known)
    wrote = snap.summary and ("inserted into" in snap.summary or "deleted from" in snap.summary)
    return snap if wrote else snap.with_rows(0, 0)
