"""Signals of one write, computed with Polars on its delta (never on the whole table).

The delta is DuckLake's change feed for the write's snapshot(s): one row per inserted, deleted,
pre-update and post-update row, with the table's columns. Null counts merge exactly: inserts and
post-images add, deletes and pre-images subtract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from lakewarden.signals.table_state import ColumnState, TableState

CHANGE_COLUMNS = ("snapshot_id", "rowid", "change_type")
_ADDS = ("insert", "update_postimage")
_REMOVES = ("delete", "update_preimage")


@dataclass(frozen=True)
class Delta:
    inserted: int = 0
    deleted: int = 0
    updated: int = 0
    null_delta: dict[str, int] = field(default_factory=dict)  # column -> change in null count
    max_event_time: float | None = None

    @property
    def rows_written(self) -> int:
        return self.inserted + self.deleted + self.updated

    def plus(self, other: Delta) -> Delta:
        """Two deltas of one table in one transaction, as one."""
        nulls = dict(self.null_delta)
        for column, change in other.null_delta.items():
            nulls[column] = nulls.get(column, 0) + change
        times = [t for t in (self.max_event_time, other.max_event_time) if t is not None]
        return Delta(
            inserted=self.inserted + other.inserted,
            deleted=self.deleted + other.deleted,
            updated=self.updated + other.updated,
            null_delta=nulls,
            max_event_time=max(times) if times else None,
        )


def from_changes(changes: pl.DataFrame, event_time: str | None = None) -> Delta:
    """Summarise a change-feed frame (``change_type`` plus the table's columns)."""
    if changes.height == 0:
        return Delta()
    data_cols = [c for c in changes.columns if c not in CHANGE_COLUMNS]
    per_kind = (
        changes.group_by("change_type")
        .agg(pl.len().alias("__rows"), *[pl.col(c).null_count() for c in data_cols])
        .rows_by_key("change_type", named=True, unique=True)
    )

    def count(kind: str, col: str = "__rows") -> int:
        return int(per_kind[kind][col]) if kind in per_kind else 0

    null_delta = {
        c: sum(count(k, c) for k in _ADDS) - sum(count(k, c) for k in _REMOVES) for c in data_cols
    }
    max_event = None
    if event_time and event_time in changes.columns:
        added = changes.filter(pl.col("change_type").is_in(_ADDS))
        max_event = to_epoch(added.get_column(event_time).max())
    return Delta(
        inserted=count("insert"),
        deleted=count("delete"),
        updated=count("update_postimage"),
        null_delta=null_delta,
        max_event_time=max_event,
    )


def apply(
    state: TableState, delta: Delta, *, when: float, writer: str | None, snapshot_id: int | None
) -> TableState:
    """The table state after ``delta`` was committed at ``when`` by ``writer``."""
    columns = tuple(
        ColumnState(c.name, c.type, max(0, c.null_count + delta.null_delta.get(c.name, 0)))
        for c in state.columns
    )
    last_event = state.last_event_time
    if delta.max_event_time is not None:
        last_event = max(last_event or delta.max_event_time, delta.max_event_time)
    changed = delta.rows_written > 0
    return state.with_changes(
        rows=max(0, state.rows + delta.inserted - delta.deleted),
        columns=columns,
        last_modified=when if changed else state.last_modified,
        last_writer=writer if changed else state.last_writer,
        last_event_time=last_event,
        snapshot_id=snapshot_id if snapshot_id is not None else state.snapshot_id,
    )


def to_epoch(value: Any) -> float | None:
    """Event-time values (timestamps, dates or epoch numbers) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # naive TIMESTAMP columns are UTC
        return value.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return None
