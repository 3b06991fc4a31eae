"""Schema drift: the difference between the last known schema of a table and the current one."""

from __future__ import annotations

from dataclasses import dataclass

COLUMN_ADDED = "column_added"
COLUMN_REMOVED = "column_removed"
TYPE_CHANGED = "type_changed"


@dataclass(frozen=True)
class SchemaChange:
    column: str
    change: str  # column_added | column_removed | type_changed
    old_type: str | None = None
    new_type: str | None = None


def diff(old: dict[str, str], new: dict[str, str]) -> list[SchemaChange]:
    """Changes from ``old`` to ``new`` (column name -> type), in the new table's column order.

    A rename shows as one removal and one addition: the catalog does not say which it was.
    """
    changes = [SchemaChange(c, COLUMN_ADDED, None, t) for c, t in new.items() if c not in old]
    changes += [SchemaChange(c, COLUMN_REMOVED, t, None) for c, t in old.items() if c not in new]
    changes += [
        SchemaChange(c, TYPE_CHANGED, old[c], t) for c, t in new.items() if c in old and old[c] != t
    ]
    return changes
