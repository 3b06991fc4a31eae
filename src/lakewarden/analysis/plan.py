"""What the engine says a statement will do, as typed values.

:mod:`lakewarden.store.plan` asks DuckDB for two JSON documents -- its parse tree
(``json_serialize_sql``) and its bound logical plan (``json_serialize_plan``) -- and this module
reads them into :class:`ParseTree` and :class:`BoundPlan`, which governance authorizes. Reading
the documents needs no engine, so it lives here, below both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lakewarden.analysis.names import display_name

# json_serialize_plan keeps a bound function's name under "name"; these classes are calls.
_BOUND_CALLS = {"BOUND_FUNCTION", "BOUND_AGGREGATE", "BOUND_WINDOW"}
# The parse tree's call nodes (also found in DDL bodies that json_serialize_plan embeds unbound).
_PARSE_CALLS = {"FUNCTION", "WINDOW", "AGGREGATE"}
_WRITE_OPERATORS = {"LOGICAL_INSERT", "LOGICAL_UPDATE", "LOGICAL_DELETE"}
# A scan function whose function_data names the table it reads.
TABLE_SCANS = {"ducklake_scan", "seq_scan"}


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
    schemas_created: tuple[str, ...] = ()  # schemas a CREATE SCHEMA makes


def read_parse_tree(doc: dict[str, Any]) -> ParseTree:
    """A parse tree from ``json_serialize_sql``'s document."""
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


def read_bound_plan(doc: dict[str, Any]) -> BoundPlan:
    """A bound plan from ``json_serialize_plan``'s document."""
    operators: list[str] = []
    table_functions: list[str] = []
    scans: list[TableRef] = []
    writes: list[TableRef] = []
    created: list[TableRef] = []
    schemas: list[str] = []
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
                info = node.get("info")
                created.extend(_ddl_refs(info))
                if kind == "LOGICAL_CREATE_SCHEMA" and isinstance(info, dict):
                    schemas.append(str(info.get("schema") or ""))
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
        schemas_created=tuple(dict.fromkeys(schemas)),
        functions=tuple(dict.fromkeys(functions)),
        unresolved_scans=unresolved,
    )


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


def _ddl_refs(info: Any) -> list[TableRef]:
    """The object a DDL statement changes and, for a rename, the name it takes: the new name
    is created as much as the old one is dropped."""
    if not isinstance(info, dict):
        return []
    refs = []
    for key in ("table", "view_name", "name"):
        ref = _entry_ref(info, key)
        if ref is not None:
            refs.append(ref)
            break
    for key in ("new_table_name", "new_view_name"):  # ALTER TABLE / ALTER VIEW ... RENAME TO
        renamed = _entry_ref(info, key)
        if renamed is not None:
            refs.append(renamed)
    return refs
