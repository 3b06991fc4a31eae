"""Contract checks: a table's state against its declared contract. Pure: no engine, no clock.

Two uses: the gate judges the state a write *would* leave (``gate``), and the check gauges and
the freshness clock judge the state the table *is* in (``evaluate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lakewarden import wording
from lakewarden.signals.schema import COLUMN_ADDED, diff
from lakewarden.signals.table_state import TableState
from lakewarden.wording import plural

FRESHNESS = "freshness"
SCHEMA = "schema"


class ColumnRules(Protocol):
    @property
    def type(self) -> str | None: ...
    @property
    def nullable(self) -> bool: ...
    @property
    def max_null_ratio(self) -> float | None: ...


class VolumeRules(Protocol):
    @property
    def max_rows_per_write(self) -> int | None: ...
    @property
    def max_delete_ratio(self) -> float | None: ...
    @property
    def max_update_ratio(self) -> float | None: ...


class Contract(Protocol):
    """What the checks read of a table contract (the policy file's ``tables`` entries)."""

    @property
    def freshness_sla(self) -> float | None: ...
    @property
    def schema_mode(self) -> str: ...
    @property
    def volume(self) -> VolumeRules: ...
    @property
    def columns(self) -> Mapping[str, ColumnRules]: ...  # lower-case column name -> rules


@dataclass(frozen=True)
class Finding:
    """One contract check on one table: ``check`` names it, e.g. ``null_ratio:email``."""

    check: str
    passing: bool
    detail: str
    measured: Any = None
    limit: Any = None
    expected: str = ""  # the limit as people read it: "≤ 1 h", "≤ 5%", "BIGINT"

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "passing": self.passing,
            "detail": self.detail,
            "measured": self.measured,
            "limit": self.limit,
            "expected": self.expected,
        }


@dataclass(frozen=True)
class WriteCounts:
    inserted: int = 0
    deleted: int = 0
    updated: int = 0


def evaluate(state: TableState, contract: Contract, now: float) -> list[Finding]:
    """Every check of the table as it stands now."""
    out: list[Finding] = []
    if contract.freshness_sla is not None:
        out.append(_freshness(state, contract.freshness_sla, now))
    columns = {c.name.lower(): c for c in state.columns}
    for name, rules in contract.columns.items():
        col = columns.get(name)
        if rules.type is not None or col is None:
            out.append(_type(name, col.type if col else None, rules.type))
        if col is None:
            continue
        if not rules.nullable:
            out.append(
                Finding(
                    f"not_null:{name}",
                    col.null_count == 0,
                    f"{plural(col.null_count, 'NULL value')} in {name}",
                    col.null_count,
                    0,
                    "no NULL values",
                )
            )
        if rules.max_null_ratio is not None:
            ratio = state.null_ratio(col.name)
            out.append(
                Finding(
                    f"null_ratio:{name}",
                    ratio <= rules.max_null_ratio,
                    f"null ratio of {name} is {wording.ratio(ratio)}",
                    round(ratio, 6),
                    rules.max_null_ratio,
                    f"≤ {wording.ratio(rules.max_null_ratio)}",
                )
            )
    return out


def gate(
    before: TableState | None, after: TableState, counts: WriteCounts, contract: Contract
) -> list[Finding]:
    """The failing checks of a write that would turn ``before`` into ``after``."""
    out: list[Finding] = []
    if before is not None:
        out += _schema_mode(before, after, contract.schema_mode)
    columns = {c.name.lower(): c for c in after.columns}
    old = {c.name.lower(): c for c in before.columns} if before else {}
    for name, rules in contract.columns.items():
        col = columns.get(name)
        if col is None or (rules.type is not None and col.type != rules.type):
            out.append(_type(name, col.type if col else None, rules.type))
            continue
        added_nulls = col.null_count - (old[name].null_count if name in old else 0)
        if not rules.nullable and added_nulls > 0:
            out.append(
                Finding(
                    f"not_null:{name}",
                    False,
                    f"the write adds {plural(added_nulls, 'NULL value')} to {name}, which "
                    "is declared NOT NULL",
                    added_nulls,
                    0,
                    "no NULL values",
                )
            )
        if rules.max_null_ratio is not None:
            ratio = after.null_ratio(col.name)
            was = before.null_ratio(old[name].name) if before and name in old else 0.0
            if ratio > rules.max_null_ratio and ratio > was:
                out.append(
                    Finding(
                        f"null_ratio:{name}",
                        False,
                        f"the write raises the null ratio of {name} to {wording.ratio(ratio)}",
                        round(ratio, 6),
                        rules.max_null_ratio,
                        f"≤ {wording.ratio(rules.max_null_ratio)}",
                    )
                )
    out += _volume(before, counts, contract.volume)
    return out


def _freshness(state: TableState, sla: float, now: float) -> Finding:
    expected = f"≤ {wording.duration(sla)} since the last write"
    if state.last_modified is None:
        return Finding(FRESHNESS, False, "no write has been seen yet", None, sla, expected)
    age = max(0.0, now - state.last_modified)
    return Finding(
        FRESHNESS,
        age <= sla,
        f"last write {wording.duration(age)} ago",
        round(age, 3),
        sla,
        expected,
    )


def _type(name: str, actual: str | None, declared: str | None) -> Finding:
    expected = declared or "present"
    if actual is None:
        return Finding(f"type:{name}", False, f"column {name} is missing", None, declared, expected)
    ok = declared is None or actual == declared
    return Finding(f"type:{name}", ok, f"column {name} is {actual}", actual, declared, expected)


def _schema_mode(before: TableState, after: TableState, mode: str) -> list[Finding]:
    if mode == "free":
        return []
    changes = diff(before.schema, after.schema)
    refused = changes if mode == "locked" else [c for c in changes if c.change != COLUMN_ADDED]
    return [
        Finding(
            SCHEMA,
            False,
            f"{c.change} {c.column} ({c.old_type or ''}->{c.new_type or ''}) "
            f"breaks schema mode {mode}",
            c.change,
            mode,
            f"schema {mode}",
        )
        for c in refused
    ]


def _volume(before: TableState | None, counts: WriteCounts, rules: VolumeRules) -> list[Finding]:
    out = []
    if rules.max_rows_per_write is not None and counts.inserted > rules.max_rows_per_write:
        out.append(
            Finding(
                "max_rows_per_write",
                False,
                f"the write inserts {plural(counts.inserted, 'row')}",
                counts.inserted,
                rules.max_rows_per_write,
                f"≤ {plural(rules.max_rows_per_write, 'row')} per write",
            )
        )
    base = before.rows if before else 0
    for kind, n, limit in (
        ("delete", counts.deleted, rules.max_delete_ratio),
        ("update", counts.updated, rules.max_update_ratio),
    ):
        if limit is None or n == 0:
            continue
        ratio = n / base if base else 1.0
        if ratio > limit:
            out.append(
                Finding(
                    f"max_{kind}_ratio",
                    False,
                    f"the write would {kind} {n:,} of {plural(base, 'row')} "
                    f"({wording.ratio(ratio)})",
                    round(ratio, 6),
                    limit,
                    f"≤ {wording.ratio(limit)} of the rows",
                )
            )
    return out
