"""JSON-safe values for the REST and MCP intakes.

Query results hold engine values that JSON cannot carry as they are. Every intake maps them the
same way, so an agent sees one representation whichever door it used:

| engine value | JSON |
|---|---|
| NULL | ``null`` |
| BOOLEAN, integers up to 64 bits, finite DOUBLE/FLOAT | boolean / number |
| NaN, +Inf, -Inf | the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` |
| DECIMAL, HUGEINT, UHUGEINT | string, e.g. ``"12.50"`` (a JSON number would lose digits) |
| TIMESTAMP, TIMESTAMPTZ, DATE, TIME | ISO 8601 string (``2026-01-01T10:00:00+00:00``) |
| INTERVAL | ISO 8601 duration, e.g. ``"P1DT3600S"``, ``"P1M"``, ``"-PT90S"``; parts of |
| | different signs are signed one by one, e.g. ``"P1M-2D"`` (as PostgreSQL writes them) |
| UUID | string in canonical 8-4-4-4-12 form |
| BLOB | base64 string (RFC 4648, with padding) |
| LIST, ARRAY | JSON array, items mapped recursively |
| STRUCT | JSON object, fields mapped recursively |
| MAP | JSON object when every key is a string, else an array of ``{"key", "value"}`` objects |
| anything else | ``str(value)`` |
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import pyarrow as pa

from lakewarden.result import Result

__all__ = ["json_rows", "json_value", "result_json"]


def json_value(value: Any) -> Any:
    """One engine value as plain JSON data (see the module table)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _duration(value)
    if isinstance(value, pa.MonthDayNano):  # a tuple: before the list/tuple case
        return _interval(value.months, value.days, value.nanoseconds)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return _mapping(value.items())
    if isinstance(value, list | tuple):
        # pyarrow gives a MAP as a list of (key, value) tuples; a tuple of two is never a row here
        # because rows are mapped by json_rows, not through this function.
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return _mapping(value)
        return [json_value(v) for v in value]
    return str(value)


def json_rows(table: pa.Table | None) -> list[list[Any]]:
    """Every row of a result table as a JSON array of JSON-safe values."""
    if table is None or table.num_columns == 0:
        return []
    columns = [_column(col) for col in table.columns]
    return [list(row) for row in zip(*columns, strict=True)]


def result_json(result: Result) -> dict[str, Any]:
    """The body of a successful statement, the same for REST and MCP."""
    return {
        "kind": result.kind,
        "columns": result.columns,
        "rows": json_rows(result.table),
        "row_count": result.row_count,
        "truncated": result.truncated,
        "rows_affected": result.rows_affected,
        "snapshot_id": result.snapshot_id,
        "trace_id": result.trace_id,
        "signals": {t: json_value(s.to_dict()) for t, s in result.signals.items()},
        **(
            {"violations": [json_value(v.to_dict()) for v in result.violations]}
            if result.violations
            else {}
        ),
        **({"dry_run": True} if result.dry_run else {}),
        **(
            {"statements": [result_json(r) for r in result.statements]} if result.statements else {}
        ),
    }


def _column(column: pa.ChunkedArray) -> list[Any]:
    # Every agent read is rendered here, so the common cases skip work: one chunk converts
    # faster on its own, and integer, boolean and text values are JSON as they are.
    values = column.chunk(0).to_pylist() if column.num_chunks == 1 else column.to_pylist()
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_string(kind):
        return values
    # MAP needs the arrow type: its python form (a list of pairs) looks like a list of lists.
    if pa.types.is_map(kind):
        return [None if v is None else _mapping(v) for v in values]
    return [json_value(v) for v in values]


def _mapping(items: Iterable[tuple[Any, Any]]) -> Any:
    pairs = list(items)
    if all(isinstance(k, str) for k, _ in pairs):
        return {k: json_value(v) for k, v in pairs}
    return [{"key": json_value(k), "value": json_value(v)} for k, v in pairs]


def _duration(value: dt.timedelta) -> str:
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    seconds = value.seconds + value.microseconds / 1_000_000
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"{sign}P{value.days}DT{text}S"


def _interval(months: int, days: int, nanoseconds: int) -> str:
    """DuckDB's INTERVAL (months, days and a time part are kept apart) as ISO 8601."""
    sign = ""
    if months <= 0 and days <= 0 and nanoseconds <= 0 and (months or days or nanoseconds):
        sign, months, days, nanoseconds = "-", -months, -days, -nanoseconds
    whole, fraction = divmod(abs(nanoseconds), 1_000_000_000)
    seconds = f"{'-' if nanoseconds < 0 else ''}{whole}"
    if fraction:
        seconds += f".{fraction:09d}".rstrip("0")
    date = (f"{months}M" if months else "") + (f"{days}D" if days else "")
    time_part = f"T{seconds}S" if nanoseconds or not date else ""
    return f"{sign}P{date}{time_part}"
