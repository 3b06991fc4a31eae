"""Read-only questions to the engine: tables, schemas, profiles, snapshots and change feeds."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import duckdb
import polars as pl

from lakewarden.analysis.names import (
    INTERNAL_SCHEMA,
    display_name,
    is_internal,
    normalize,
    split_name,
)
from lakewarden.store.engine import LAKE_ALIAS

_INTERNAL_SCHEMAS = ("information_schema", "pg_catalog", INTERNAL_SCHEMA)


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_ref(name: str) -> str:
    schema, table = split_name(name)
    return f"{ident(schema)}.{ident(table)}"


def schemas(cur: duckdb.DuckDBPyConnection, database: str) -> dict[str, dict[str, str]]:
    """Every base table of ``database``: display name -> {column: type}, in column order."""
    rows = cur.execute(
        "SELECT c.schema_name, c.table_name, c.column_name, c.data_type "
        "FROM duckdb_columns() c JOIN duckdb_tables() t "
        "  ON t.database_name = c.database_name AND t.schema_name = c.schema_name "
        "  AND t.table_name = c.table_name "
        "WHERE c.database_name = ? AND NOT list_contains(?, c.schema_name) "
        "ORDER BY c.schema_name, c.table_name, c.column_index",
        [database, list(_INTERNAL_SCHEMAS)],
    ).fetchall()
    out: dict[str, dict[str, str]] = {}
    for schema, table, column, dtype in rows:
        out.setdefault(display_name(schema, table), {})[column] = dtype
    return out


def schema_at(cur: duckdb.DuckDBPyConnection, table: str, snapshot: int) -> dict[str, str] | None:
    """``table``'s columns and types at a lake snapshot; None when it did not exist then."""
    try:
        rows = cur.execute(
            f"DESCRIBE SELECT * FROM {table_ref(table)} AT (VERSION => {int(snapshot)})"
        ).fetchall()
    except duckdb.CatalogException:
        return None
    return {name: dtype for name, dtype, *_ in rows}


@dataclass(frozen=True)
class Profile:
    rows: int
    null_counts: dict[str, int]
    max_event_time: Any


def profile(
    cur: duckdb.DuckDBPyConnection,
    table: str,
    columns: list[str],
    event_time: str | None,
    at: int | None = None,
) -> Profile:
    """Row count, null count of every column and max event time in ONE aggregate query; with
    ``at``, as the table was at that lake snapshot.

    The scan stays inside DuckDB (columnar, parallel); nothing but one row reaches Python.
    """
    exprs = ["count(*)"] + [f"count(*) - count({ident(c)})" for c in columns]
    if event_time and event_time in columns:
        exprs.append(f"max({ident(event_time)})")
    version = f" AT (VERSION => {int(at)})" if at is not None else ""
    row = _first(cur.execute(f"SELECT {', '.join(exprs)} FROM {table_ref(table)}{version}"))
    assert row is not None
    nulls = {c: int(row[i + 1]) for i, c in enumerate(columns)}
    max_event = row[len(columns) + 1] if len(row) > len(columns) + 1 else None
    return Profile(rows=int(row[0]), null_counts=nulls, max_event_time=max_event)


def staged_profile(
    cur: duckdb.DuckDBPyConnection, ref: str, event_time: str | None
) -> tuple[Profile, int]:
    """Row count, null count of every column and max event time of the table ``ref`` (an
    SQL reference, quoted), in one aggregate; ``COLUMNS(*)`` names each count by its column.
    Also the lake snapshot the cursor's open transaction reads (one round trip less)."""
    exprs = f"(SELECT id FROM {LAKE_ALIAS}.current_snapshot()), count(*), count(COLUMNS(*))"
    if event_time:
        exprs += f", max(COLUMNS(c -> c = {_literal(event_time)}))"
    result = cur.execute(f"SELECT {exprs} FROM {ref}")
    names = [d[0] for d in result.description or ()]
    row = _first(result)
    assert row is not None
    rows = int(row[1])
    last = len(names) - (1 if event_time else 0)
    nulls = {names[i]: rows - int(row[i]) for i in range(2, last)}
    profile = Profile(rows=rows, null_counts=nulls, max_event_time=row[-1] if event_time else None)
    return profile, int(row[0])


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def current_snapshot(cur: duckdb.DuckDBPyConnection) -> int:
    row = _first(cur.execute(f"SELECT id FROM {LAKE_ALIAS}.current_snapshot()"))
    return int(row[0]) if row else 0


def changes(cur: duckdb.DuckDBPyConnection, table: str, first: int, last: int) -> pl.DataFrame:
    """DuckLake's change feed of ``table`` for snapshots ``first..last``: the delta only."""
    schema, name = split_name(table)
    return cur.execute(
        "FROM ducklake_table_changes(?, ?, ?, ?, ?)", [LAKE_ALIAS, schema, name, first, last]
    ).pl()


def insertions(cur: duckdb.DuckDBPyConnection, table: str, first: int, last: int) -> pl.DataFrame:
    """The rows inserted into ``table`` in snapshots ``first..last`` (no deletes, no updates)."""
    schema, name = split_name(table)
    return cur.execute(
        "FROM ducklake_table_insertions(?, ?, ?, ?, ?)", [LAKE_ALIAS, schema, name, first, last]
    ).pl()


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: int
    time: datetime
    agent: str | None
    message: str | None
    trace_id: str | None
    span_id: str | None
    changes: dict[str, list[str]]
    rows_added: int | None = None  # for one table's snapshots: rows it inserted (or updated)
    rows_removed: int | None = None  # ... and rows it deleted
    summary: str | None = None  # the change in words: "created orders; inserted into orders"
    commit_id: str | None = None  # lakewarden's id of the commit (in its extra info)

    def with_rows(self, added: int | None, removed: int | None) -> Snapshot:
        return replace(self, rows_added=added, rows_removed=removed)

    def described(self, names: Mapping[str, str]) -> Snapshot:
        """With :attr:`summary` filled in, table ids named by ``names`` (see :func:`table_ids`)."""
        return replace(self, summary=describe_changes(self.changes, names))

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "time": self.time.isoformat(),
            "agent": self.agent,
            "message": self.message,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            # DuckLake spells table ids as text; they are numbers.
            "changes": {
                k: [int(v) if v.isdigit() else v for v in values]
                for k, values in self.changes.items()
            },
            "summary": self.summary,
            **(
                {"rows_added": self.rows_added, "rows_removed": self.rows_removed}
                if self.rows_added is not None
                else {}
            ),
        }


def snapshots(
    cur: duckdb.DuckDBPyConnection, *, since: int | None = None, limit: int | None = None
) -> list[Snapshot]:
    """Snapshots newest first (or, with ``since``, those after it, oldest first).

    Read from DuckLake's metadata tables, not its ``snapshots()`` function: that one builds a row
    for every snapshot of the lake's history before any filter applies (~25 us each, measured;
    250 ms at 10,000 snapshots), and a sidecar of a fleet asks after every commit. Here the
    filter and the limit reach the catalog database (an index on PostgreSQL), and the change
    map is parsed from the same text DuckLake parses it from (:func:`parse_changes`).
    """
    meta = f"__ducklake_metadata_{LAKE_ALIAS}"
    sql = (
        "SELECT s.snapshot_id, s.snapshot_time, c.author, c.commit_message, c.commit_extra_info, "
        f"c.changes_made FROM {meta}.ducklake_snapshot s "
        f"LEFT JOIN {meta}.ducklake_snapshot_changes c USING (snapshot_id)"
    )
    params: list[Any] = []
    if since is not None:
        sql += " WHERE s.snapshot_id > ? ORDER BY s.snapshot_id"
        params.append(since)
    else:
        sql += " ORDER BY s.snapshot_id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    out = []
    for sid, when, author, message, extra, changes in cur.execute(sql, params).fetchall():
        info = extra_info(extra)
        out.append(
            Snapshot(
                snapshot_id=int(sid),
                time=_utc(when),
                agent=author,
                message=message,
                trace_id=string_or_none(info.get("trace_id")),
                span_id=string_or_none(info.get("span_id")),
                changes=parse_changes(changes or ""),
                commit_id=string_or_none(info.get("commit_id")),
            )
        )
    return out


# DuckLake's ``changes_made`` entries -> the keys of ``snapshots()``'s change map (DuckLake
# v1.5: SnapshotChangeInformation::ParseChangesMade, DuckLakeSnapshotsFunction). A compaction
# ("compacted_table") has no key there.
_CHANGE_KEYS = {
    "created_schema": "schemas_created",
    "dropped_schema": "schemas_dropped",
    "created_table": "tables_created",
    "created_view": "views_created",
    "created_scalar_macro": "scalar_macros_created",
    "created_table_macro": "table_macros_created",
    "dropped_table": "tables_dropped",
    "altered_table": "tables_altered",
    "inserted_into_table": "tables_inserted_into",
    "deleted_from_table": "tables_deleted_from",
    "dropped_view": "views_dropped",
    "dropped_scalar_macro": "scalar_macros_dropped",
    "dropped_table_macro": "table_macros_dropped",
    "altered_view": "views_altered",
    "inlined_insert": "inlined_insert",
    "inlined_delete": "inlined_delete",
    "flushed_inlined": "flushed_inlined",
    "inline_flush": "flushed_inlined",
    "merge_adjacent": "merge_adjacent",
    "rewrite_delete": "rewrite_delete",
}
_NAMED = (
    "created_schema",
    "created_table",
    "created_view",
    "created_scalar_macro",
    "created_table_macro",
)


def parse_changes(text: str) -> dict[str, list[str]]:
    """A snapshot's change map from DuckLake's ``changes_made`` text: comma-separated
    ``kind:value`` entries, a value an id or double-quoted names (``"main"."t"``, ``""`` inside
    a name for a quote). Created objects are named ``schema.name``, as ids name the rest."""
    out: dict[str, list[str]] = {}
    pos = 0
    while pos < len(text):
        colon = text.index(":", pos)
        kind, pos = text[pos:colon].lower(), colon + 1
        value, in_quotes = [], False
        while pos < len(text) and (in_quotes or text[pos] != ","):
            if text[pos] == '"':
                in_quotes = not in_quotes
            value.append(text[pos])
            pos += 1
        pos += 1  # the comma
        key = _CHANGE_KEYS.get(kind)
        if key is None:
            continue
        raw = "".join(value)
        entry = ".".join(_unquote_parts(raw)) if kind in _NAMED else raw
        if entry not in out.setdefault(key, []):
            out[key].append(entry)
    return out


def _unquote_parts(raw: str) -> list[str]:
    """``"main"."t"`` -> ``["main", "t"]`` (``""`` is a quote inside a name)."""
    parts, current, pos, quoted = [], [], 0, False
    while pos < len(raw):
        ch = raw[pos]
        if quoted and ch == '"' and raw[pos + 1 : pos + 2] == '"':
            current.append('"')
            pos += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == "." and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        pos += 1
    parts.append("".join(current))
    return parts


# DuckLake's change-map keys, as verbs. Inlined inserts and deletes are the same change for a
# reader: rows went in or out; where they are stored is DuckLake's business.
_VERBS = {
    "schemas_created": "created schema",
    "schemas_dropped": "dropped schema",
    "tables_created": "created",
    "tables_dropped": "dropped",
    "tables_altered": "altered",
    "views_created": "created view",
    "views_dropped": "dropped view",
    "tables_inserted_into": "inserted into",
    "inlined_insert": "inserted into",
    "tables_deleted_from": "deleted from",
    "inlined_delete": "deleted from",
    "tables_compacted": "compacted",
    "merge_adjacent": "compacted",
}


def describe_changes(changes: Mapping[str, list[str]], names: Mapping[str, str]) -> str:
    """A snapshot's change map in words, lakewarden's own tables left out."""
    said: dict[str, list[str]] = {}
    for key, values in changes.items():
        verb = _VERBS.get(key, key.replace("_", " "))
        for value in values:
            # ids for most keys; "schema.table" text for tables_created
            name = names.get(value) or (normalize(value) if key.startswith("tables") else value)
            if is_internal(name):
                continue
            targets = said.setdefault(verb, [])
            if name not in targets:
                targets.append(name)
    return "; ".join(f"{verb} {', '.join(targets)}" for verb, targets in said.items())


def table_ids(cur: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Every table id the lake ever had (as the snapshots' change map spells it) -> name."""
    meta = f"__ducklake_metadata_{LAKE_ALIAS}"
    rows = cur.execute(
        f"SELECT t.table_id, s.schema_name, t.table_name FROM {meta}.ducklake_table t "
        f"JOIN {meta}.ducklake_schema s USING (schema_id)"
    ).fetchall()
    return {str(tid): display_name(schema, name) for tid, schema, name in rows}


def extra_info(raw: str | None) -> dict[str, Any]:
    """A snapshot's extra info as an object, or empty: anyone who commits to the catalog writes
    it, so it may be anything, a nesting bomb included."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def string_or_none(value: Any) -> str | None:
    """A field of extra info that must be a string (see :func:`extra_info`)."""
    return value if isinstance(value, str) else None


def snapshot_time(cur: duckdb.DuckDBPyConnection, snapshot_id: int) -> datetime | None:
    row = _first(
        cur.execute(
            f"SELECT snapshot_time FROM __ducklake_metadata_{LAKE_ALIAS}.ducklake_snapshot "
            "WHERE snapshot_id = ?",
            [snapshot_id],
        )
    )
    if not row or row[0] is None:
        return None
    return _utc(row[0])


def _first(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row of a result, read to the end.

    Measured with duckdb 1.5.5: a result left half-read (``fetchone``) keeps the cursor's DuckLake
    transaction open, and with a SQLite catalog that holds a lock that makes every other
    writer's commit fail with "database is locked".
    """
    rows = result.fetchall()
    return rows[0] if rows else None


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):  # a SQLite catalog stores it as text, in UTC
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def estimated_rows(cur: duckdb.DuckDBPyConnection, database: str) -> dict[str, int]:
    """Row counts from table metadata, without a scan (plain DuckDB files)."""
    rows = cur.execute(
        "SELECT schema_name, table_name, estimated_size FROM duckdb_tables() "
        "WHERE database_name = ?",
        [database],
    ).fetchall()
    return {display_name(s, t): int(n or 0) for s, t, n in rows}
