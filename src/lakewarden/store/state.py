"""Persisted table state, so signals and metrics survive a restart without a full rescan.

The state lives in its own small DuckDB file beside the lake and records the lake snapshot it is
true at; after a restart only the snapshots since then are replayed from the change feed.
"""

from __future__ import annotations

import duckdb

from lakewarden.signals.table_state import TableState
from lakewarden.store.engine import STATE_ALIAS

_TABLES = f"{STATE_ALIAS}.main.table_state"
_META = f"{STATE_ALIAS}.main.meta"


class StateStore:
    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._cur = cur
        cur.execute(f"CREATE TABLE IF NOT EXISTS {_TABLES} (name VARCHAR PRIMARY KEY, state JSON)")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {_META} (key VARCHAR PRIMARY KEY, value VARCHAR)")

    def load(self) -> tuple[dict[str, TableState], int | None]:
        """All table states and the snapshot they are true at (None: no state yet)."""
        tables = {
            name: TableState.from_json(text)
            for name, text in self._cur.execute(f"SELECT name, state FROM {_TABLES}").fetchall()
        }
        row = self._cur.execute(f"SELECT value FROM {_META} WHERE key = 'snapshot_id'").fetchone()
        return tables, (int(row[0]) if row else None)

    def save(self, changed: list[TableState], removed: list[str], snapshot_id: int | None) -> None:
        """Write the changed tables and the new snapshot mark in one transaction."""
        cur = self._cur
        cur.begin()
        try:
            for name in removed:
                cur.execute(f"DELETE FROM {_TABLES} WHERE name = ?", [name])
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
