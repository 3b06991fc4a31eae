"""What a governed statement returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from lakewarden.errors import Violation
from lakewarden.signals.update import TableSignals


@dataclass(frozen=True)
class Result:
    """The outcome of one governed statement.

    ``kind`` is read, write or ddl. Reads carry their rows (``rows``, ``pl()``, ``arrow()``);
    writes carry ``rows_affected``, the ``snapshot_id`` of their commit and the ``signals`` of
    each table they changed. ``trace_id`` names the statement's trace.
    """

    kind: str
    summary: str
    trace_id: str | None
    table: pa.Table | None = None
    truncated: bool = False
    rows_affected: int | None = None
    snapshot_id: int | None = None
    signals: dict[str, TableSignals] = field(default_factory=dict)
    violations: tuple[Violation, ...] = ()  # flagged but allowed (warn/observe modes)
    dry_run: bool = False  # judged and rolled back: signals are what the write would leave
    statements: tuple[Result, ...] = ()  # of an atomic batch, one per statement

    @property
    def columns(self) -> list[str]:
        return list(self.table.schema.names) if self.table is not None else []

    @property
    def row_count(self) -> int:
        return self.table.num_rows if self.table is not None else 0

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        if self.table is None:
            return []
        return list(zip(*(col.to_pylist() for col in self.table.columns), strict=True))

    def pl(self) -> pl.DataFrame:
        """The rows as a polars DataFrame (empty for writes)."""
        if self.table is None:
            return pl.DataFrame()
        frame = pl.from_arrow(self.table)
        assert isinstance(frame, pl.DataFrame)
        return frame

    def arrow(self) -> pa.Table:
        return self.table if self.table is not None else pa.table({})

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows
