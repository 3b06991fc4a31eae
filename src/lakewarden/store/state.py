"""Persisted table state, so signals and metrics survive a restart without a full rescan.

The state lives in its own small DuckDB file beside the lake and records the lake snapshot it is
true at; after a restart only the snapshots since then are replayed from the change feed.

The anomaly models keep no state of their own here: they are rebuilt by replaying ``history()``
with the times a table's new level was accepted (``accepts``/``add_accept``). Those three methods
are the whole persisted interface of the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from lakewarden.signals.table_state import TableState, WriteRecord
from lakewarden.store.engine import STATE_ALIAS

_TABLES = f"{STATE_ALIAS}.main.table_state"
_META = f"{STATE_ALIAS}.main.meta"
_HISTORY = f"{STATE_ALIAS}.main.history"
_ACCEPTS = f"{STATE_ALIAS}.main.anomaly_accepts"
ACCEPTS_KEEP = 20  # per table: older accepts lie before the kept history anyway
HISTORY_KEEP = 5000  # writes per table kept for anomaly training (about 7 months of hourly loads)


class StateStore:
    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._cur = cur
        cur.execute(f"CREATE TABLE IF NOT EXISTS {_TABLES} (name VARCHAR PRIMARY KEY, state JSON)")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {_META} (key VARCHAR PRIMARY KEY, value VARCHAR)")
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {_HISTORY} (name VARCHAR, time DOUBLE, "
            "rows_added BIGINT, rows_removed BIGINT, writer VARCHAR, snapshot_id BIGINT)"
        )
        cur.execute(f"CREATE TABLE IF NOT EXISTS {_ACCEPTS} (name VARCHAR, time DOUBLE)")

    def accepts(self, name: str) -> list[float]:
        """When the table's anomalous level was accepted as its new normal, oldest first."""
        rows = self._cur.execute(
            f"SELECT time FROM {_ACCEPTS} WHERE name = ? ORDER BY time DESC LIMIT {ACCEPTS_KEEP}",
            [name],
        ).fetchall()
        return sorted(t for (t,) in rows)

    def add_accept(self, name: str, at: float) -> None:
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
