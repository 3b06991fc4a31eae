"""What lakewarden knows about a table between writes, kept incrementally and persisted."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple


class WriteRecord(NamedTuple):
    """One committed change of a table: the history anomaly scores are trained on."""

    time: float  # epoch seconds of the commit
    rows_added: int
    rows_removed: int
    writer: str | None
    snapshot_id: int | None


@dataclass(frozen=True)
class ColumnState:
    name: str
    type: str
    null_count: int = 0


@dataclass(frozen=True)
class TableState:
    name: str
    rows: int = 0
    columns: tuple[ColumnState, ...] = ()
    last_modified: float | None = None  # epoch seconds of the last commit that changed it
    last_writer: str | None = None
    event_time_column: str | None = None
    last_event_time: float | None = None  # epoch seconds: max of the event-time column
    snapshot_id: int | None = None  # the lake snapshot these numbers are true at
    profiled_at: float | None = None  # epoch seconds of the last full profile (re-base)
    schema_changes: dict[str, int] = field(default_factory=dict)  # change kind -> count

    @property
    def schema(self) -> dict[str, str]:
        return {c.name: c.type for c in self.columns}

    def column(self, name: str) -> ColumnState | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None

    def null_ratio(self, column: str) -> float:
        col = self.column(column)
        if col is None or self.rows <= 0:
            return 0.0
        return min(1.0, max(0.0, col.null_count / self.rows))

    def null_ratios(self) -> dict[str, float]:
        return {c.name: self.null_ratio(c.name) for c in self.columns}

    def with_changes(self, **changes: Any) -> TableState:
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TableState:
        data = json.loads(text)
        data["columns"] = tuple(ColumnState(**c) for c in data.get("columns", ()))
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """The table's signals as plain data (CLI ``--json``, REST, ``Result.signals``)."""
        return {
            "table": self.name,
            "rows": self.rows,
            "columns": [
                {
                    "name": c.name,
                    "type": c.type,
                    "null_count": c.null_count,
                    "null_ratio": round(self.null_ratio(c.name), 6),
                }
                for c in self.columns
            ],
            "last_modified": self.last_modified,
            "last_writer": self.last_writer,
            "event_time_column": self.event_time_column,
            "last_event_time": self.last_event_time,
            "snapshot_id": self.snapshot_id,
            "profiled_at": self.profiled_at,
            "schema_changes": dict(self.schema_changes),
        }
