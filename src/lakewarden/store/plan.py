"""Ask the engine what a statement will do, without running it.

Two descriptions come from DuckDB itself, so lakewarden authorizes what the engine will execute
rather than what the text seems to say:

- :func:`parse_tree` -- DuckDB's own parse tree (``json_serialize_sql``; SELECT statements only):
  every function call and table function exactly as written, before any binding. It is read
  first because binding a table function runs its bind code, and some bind code has effects (or
  crashes the process: measured with duckdb 1.5.5, binding ``ducklake_set_option`` through
  ``json_serialize_plan`` ends the process with SIGSEGV). Only a statement whose table functions
  passed the allow-list may be bound.
- :func:`bound_plan` -- the bound logical plan (``json_serialize_plan``): every table scanned with
  its real catalog and schema after ``query()``, view, macro and CTE expansion, every table
  function by its registered name, every write target, every operator and every function the
  binder kept. Constant folding can remove a call evaluated at bind time (``getvariable``), which
  is why the parse tree is checked too.

Neither executes the statement. Both need the caller's cursor, so an open transaction's own
changes (a table created earlier in an atomic batch) are seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from lakewarden.analysis.names import display_name

# json_serialize_plan keeps a bound function's name under "name"; these classes are calls.
_BOUND_CALLS = {"BOUND_FUNCTION", "BOUND_AGGREGATE", "BOUND_WINDOW"}
# The parse tree's call nodes (also found in DDL bodies that json_serialize_plan embeds unbound).
_PARSE_CALLS = {"FUNCTION", "WINDOW", "AGGREGATE"}
_WRITE_OPERATORS = {"LOGICAL_INSERT", "LOGICAL_UPDATE", "LOGICAL_DELETE"}
# A scan function whose function_data names the table it reads.
TABLE_SCANS = {"ducklake_scan", "seq_scan"}


class PlanUnavailable(Exception):
    """The engine would not describe the statement; ``reason`` says why, in one line."""

    def __init__(self, reason: str, *, binding: bool, error_type: str = "engine") -> None:
        super().__init__(reason)
        self.reason = reason
        self.binding = binding  # True: the statement does not bind (unknown table, type error)
        self.error_type = error_type  # the engine's class of error: catalog, binder, ...


@dataclass(frozen=True)
class TableRef:
    catalog: str
    schema: str
    table: str

    @property
    def name(self) -> str:
        return display_name(self.schema, self.table)


@dataclass(frozen=True)
class ParseTree:
    """What DuckDB's parser saw: the names of every call and table function."""

    functions: tuple[str, ...]
    table_functions: tuple[str, ...]
    # Unqualified one-part column names: the binder calls a function of that name without
    # arguments when no column has it (``SELECT current_user``).
    bare_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class BoundPlan:
    """What DuckDB's binder and planner will do."""

    operators: tuple[str, ...]  # LOGICAL_* operator types
    table_functions: tuple[str, ...]  # every LOGICAL_GET function (scans included)
    scans: tuple[TableRef, ...]  # tables read by a scan function
    writes: tuple[TableRef, ...]  # tables inserted into, updated or deleted from
    created: tuple[TableRef, ...]  # objects a DDL statement creates, drops or alters
    functions: tuple[str, ...]  # calls kept in the bound plan, and calls in DDL bodies
    unresolved_scans: int  # scan functions whose table could not be read from the plan


def parse_tree(cur: duckdb.DuckDBPyConnection, sql: str) -> ParseTree:
    """DuckDB's parse tree of a SELECT statement (``PlanUnavailable`` for any other kind)."""
    doc = _ask(cur, "SELECT json_serialize_sql(?)", sql)
    functions: list[str] = []
    table_functions: list[str] = []
    bare: list[str] = []
    for node in _nodes(doc.get("statements", [])):
        if node.get("class") == "COLUMN_REF":
            names = node.get("column_names") or []
            if len(names) == 1:
                bare.append(str(names[0]).lower())
        elif node.get("type") == "TABLE_FUNCTION":
            func = node.get("function") or {}
            table_functions.append(str(func.get("function_name", "")).lower())
        elif node.get("class") in _PARSE_CALLS and "function_name" in node:
            functions.append(str(node["function_name"]).lower())
    # A table function's own call node is also a FUNCTION node: keep it only as a table function.
    for name in table_functions:
        if name in functions:
            functions.remove(name)
    return ParseTree(
        tuple(dict.fromkeys(functions)),
        tuple(dict.fromkeys(table_functions)),
        tuple(dict.fromkeys(bare)),
    )


def bound_plan(cur: duckdb.DuckDBPyConnection, sql: str) -> BoundPlan:
    """Bind and plan ``sql`` on ``cur`` and describe the plan; nothing is executed."""
    doc = _ask(cur, "SELECT json_serialize_plan(?)", sql)
    operators: list[str] = []
    table_functions: list[str] = []
    scans: list[TableRef] = []
    writes: list[TableRef] = []
    created: list[TableRef] = []
    functions: list[str] = []
    unresolved = 0
    for node in _nodes(doc.get("plans", [])):
        kind = node.get("type")
        if isinstance(kind, str) and kind.startswith("LOGICAL_"):
            operators.append(kind)
            if kind == "LOGICAL_GET":
                name = str(node.get("name", "")).lower()
                table_functions.append(name)
                if name in TABLE_SCANS:
                    ref = _scan_ref(node.get("function_data"))
                    if ref is None:
                        unresolved += 1
                    else:
                        scans.append(ref)
            elif kind in _WRITE_OPERATORS:
                ref = _entry_ref(node.get("table_info"), "table")
                if ref is not None:
                    writes.append(ref)
            elif kind.startswith(("LOGICAL_CREATE", "LOGICAL_DROP", "LOGICAL_ALTER")):
                ref = _ddl_ref(node.get("info"))
                if ref is not None:
                    created.append(ref)
        elif kind == "TABLE_FUNCTION":  # in a DDL body, which the plan carries unbound
            func = node.get("function") or {}
            table_functions.append(str(func.get("function_name", "")).lower())
        cls = node.get("expression_class") or node.get("class")
        if cls in _BOUND_CALLS and "name" in node:
            functions.append(str(node["name"]).lower())
        elif cls in _PARSE_CALLS and "function_name" in node:
            functions.append(str(node["function_name"]).lower())
    return BoundPlan(
        operators=tuple(dict.fromkeys(operators)),
        table_functions=tuple(dict.fromkeys(table_functions)),
        scans=tuple(dict.fromkeys(scans)),
        writes=tuple(dict.fromkeys(writes)),
        created=tuple(dict.fromkeys(created)),
        functions=tuple(dict.fromkeys(functions)),
        unresolved_scans=unresolved,
    )


def _ask(cur: duckdb.DuckDBPyConnection, query: str, sql: str) -> dict[str, Any]:
    try:
        row = cur.execute(query, [sql]).fetchone()
    except duckdb.InterruptException:
        raise  # the statement's time limit, which covers planning too: the caller reports it
    except duckdb.Error as exc:
        kind = type(exc).__name__.removesuffix("Exception").lower()
        raise PlanUnavailable(_first_line(str(exc)), binding=True, error_type=kind) from exc
    except RecursionError as exc:  # a deeply nested plan is deeper than Python's json reader
        raise PlanUnavailable("the statement is nested too deeply", binding=False) from exc
    try:
        doc = json.loads(row[0]) if row and row[0] else {}
    except (RecursionError, ValueError) as exc:
        raise PlanUnavailable("the statement is nested too deeply", binding=False) from exc
    if not isinstance(doc, dict):
        raise PlanUnavailable("the engine gave no description", binding=False)
    if doc.get("error"):
        message = _first_line(str(doc.get("error_message", "")))
        # "not implemented": the engine cannot describe this kind of statement (PIVOT without
        # an IN list is two statements, MULTI); every other kind of error is a binding error.
        error_type = str(doc.get("error_type") or "engine")
        binding = error_type != "not implemented"
        raise PlanUnavailable(message, binding=binding, error_type=error_type)
    return doc


def _nodes(root: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a JSON document, without recursion (plans can nest thousands deep)."""
    stack = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _scan_ref(data: Any) -> TableRef | None:
    if not isinstance(data, dict):
        return None
    # ducklake_scan: catalog_name/schema_name/table_name; seq_scan: catalog/schema/table.
    catalog = data.get("catalog_name", data.get("catalog"))
    schema = data.get("schema_name", data.get("schema"))
    table = data.get("table_name", data.get("table"))
    if not (isinstance(catalog, str) and isinstance(schema, str) and isinstance(table, str)):
        return None
    if not table:
        return None
    return TableRef(catalog.lower(), schema.lower(), table.lower())


def _entry_ref(info: Any, key: str) -> TableRef | None:
    if not isinstance(info, dict):
        return None
    name = info.get(key)
    if not isinstance(name, str) or not name:
        return None
    return TableRef(
        str(info.get("catalog") or "").lower(), str(info.get("schema") or "").lower(), name.lower()
    )


def _ddl_ref(info: Any) -> TableRef | None:
    if not isinstance(info, dict):
        return None
    for key in ("table", "view_name", "name"):
        ref = _entry_ref(info, key)
        if ref is not None:
            return ref
    return None


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "unknown error"
