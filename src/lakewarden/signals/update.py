"""The signals of one table after one write: what changed, and where the table now stands."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lakewarden.signals.delta import Delta
from lakewarden.signals.schema import SchemaChange
from lakewarden.signals.table_state import ColumnState, TableState


@dataclass(frozen=True)
class TableSignals:
    """What a write did to one table (``Result.signals[table]``); ``to_dict`` is its JSON."""

    state: TableState
    delta: Delta = field(default_factory=Delta)
    schema_changes: tuple[SchemaChange, ...] = ()
    dropped: bool = False

    @property
    def table(self) -> str:
        return self.state.name

    @property
    def rows(self) -> int:
        return self.state.rows

    @property
    def columns(self) -> tuple[ColumnState, ...]:
        return self.state.columns

    @property
    def rows_inserted(self) -> int:
        return self.delta.inserted

    @property
    def rows_deleted(self) -> int:
        return self.delta.deleted

    @property
    def rows_updated(self) -> int:
        return self.delta.updated

    @property
    def rows_written(self) -> int:
        return self.delta.rows_written

    def null_ratio(self, column: str) -> float:
        return self.state.null_ratio(column)

    def to_dict(self) -> dict[str, Any]:
        out = self.state.summary()
        out.update(
            rows_inserted=self.delta.inserted,
            rows_deleted=self.delta.deleted,
            rows_updated=self.delta.updated,
            schema_diff=[c.__dict__ for c in self.schema_changes],
            dropped=self.dropped,
        )
        return out
