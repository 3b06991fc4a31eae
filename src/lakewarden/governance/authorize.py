"""Authorization of what the engine will do, deny by default.

The text analyser (sqlglot) names tables for summaries and a first check, but text can hide what
runs: ``query('...')`` carries SQL in a string, a CTE can be named like the table it reads, a
view or macro expands to other tables, ``TRUNCATE`` is a delete. So the decision is taken on the
engine's own descriptions (asked by :mod:`lakewarden.store.plan`, read into typed values by
:mod:`lakewarden.analysis.plan`), in two steps:

1. :func:`before_binding` -- from DuckDB's parse tree (SELECT) or the text analysis (other
   statements): every table function and every function call must be on an allow-list. This runs
   before the statement is bound, because binding runs a table function's bind code.
2. :func:`plan_refusals` and :func:`grant_violations` -- from the bound plan: every operator,
   table function and function on an allow-list, every scan and write inside the lake and outside
   lakewarden's own schema, every table scanned readable and every table written writable by
   the agent.

Refusals from steps 1 and 2 (``plan_refusals``) hold for every agent, open mode included; grant
violations follow the agent's policy mode.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from lakewarden.analysis.names import INTERNAL_SCHEMA
from lakewarden.analysis.plan import BoundPlan, ParseTree, TableRef
from lakewarden.analysis.statement import KEYWORD_CALLS, Statement
from lakewarden.errors import Violation
from lakewarden.governance.allowlists import (
    ALLOWED_FUNCTIONS,
    ALLOWED_OPERATORS,
    ALLOWED_TABLE_FUNCTIONS,
    REFUSED_FUNCTIONS,
    REFUSED_TABLE_FUNCTIONS,
    SCAN_FUNCTIONS,
)
from lakewarden.governance.policy import AgentPolicy

_SYSTEM_SCHEMAS = {INTERNAL_SCHEMA, "information_schema", "pg_catalog"}
_WRITES = {"LOGICAL_INSERT", "LOGICAL_UPDATE", "LOGICAL_DELETE", "LOGICAL_MERGE_INTO"}
_DDL_PREFIXES = ("LOGICAL_CREATE", "LOGICAL_DROP", "LOGICAL_ALTER")
_KNOWN_KINDS = {"read", "write", "ddl"}
_REWRITE = "rewrite the statement with plain SQL over the lake's tables"


def before_binding(stmt: Statement, parse: ParseTree | None) -> list[Violation]:
    """Refusals from the statement as written; nothing may be bound if there are any."""
    out: list[Violation] = []
    if stmt.kind not in _KNOWN_KINDS:
        out.append(
            Violation(
                "statement_class",
                f"{stmt.operation} statements are not allowed for agents (not a read, write or "
                "DDL statement lakewarden can authorize)",
            )
        )
    table_functions = set(stmt.functions)
    calls = set(stmt.calls)
    implicit = set(stmt.implicit_calls)
    if parse is not None:
        table_functions |= set(parse.table_functions)
        calls |= set(parse.functions)
        # ``SELECT current_role`` calls current_role(); a column of that name would win, but
        # the plan cannot tell the two apart once the call is folded into a constant.
        implicit |= set(parse.bare_names) & KEYWORD_CALLS
    # sqlglot's own names of calls it knows: only a refusal can come of them, as its names
    # are not DuckDB's (the plan and DuckDB's parse tree judge the rest by the allow-list).
    calls |= {n for n in implicit if n in REFUSED_FUNCTIONS}
    out += table_function_refusals(table_functions)
    out += function_refusals(calls)
    return out


def table_function_refusals(names: Iterable[str]) -> list[Violation]:
    out = []
    for name in sorted(set(names)):
        if name in ALLOWED_TABLE_FUNCTIONS and name not in SCAN_FUNCTIONS:
            continue
        why = REFUSED_TABLE_FUNCTIONS.get(name, "is not on the table-function allow-list")
        if name in SCAN_FUNCTIONS:
            why = "is the engine's internal scan; name the table instead"
        elif name in REFUSED_TABLE_FUNCTIONS:
            why = f"is refused: it {why}"
        out.append(
            Violation(
                "table_function",
                f"table function {name}() {why}; {_REWRITE}",
            )
        )
    return out


def function_refusals(names: Iterable[str]) -> list[Violation]:
    out = []
    for name in sorted(set(names)):
        if name in ALLOWED_FUNCTIONS:
            continue
        reason = REFUSED_FUNCTIONS.get(name)
        why = f"is refused: it {reason}" if reason else "is not on the function allow-list"
        out.append(Violation("function", f"function {name}() {why}"))
    return out


def plan_refusals(stmt: Statement, plan: BoundPlan, lake_database: str) -> list[Violation]:
    """Refusals of the bound plan that hold for every agent."""
    out: list[Violation] = []
    for op in plan.operators:
        if op not in ALLOWED_OPERATORS:
            pretty = op.removeprefix("LOGICAL_").replace("_", " ").lower()
            out.append(
                Violation("operator", f"the plan contains {pretty}, which agents may not run")
            )
    scans_named = [f for f in plan.table_functions if f not in SCAN_FUNCTIONS]
    out += table_function_refusals(scans_named)
    out += function_refusals(plan.functions)
    if plan.unresolved_scans:
        out.append(
            Violation(
                "unresolved_scan",
                "the engine's plan reads a table it does not name; the statement cannot be "
                f"checked against the policy; {_REWRITE}",
            )
        )
    for name in (
        *(p for ref in plan.created for p in (ref.schema, ref.table)),
        *plan.schemas_created,
    ):
        if ambiguous_name(name):
            out.append(
                Violation(
                    "object_name",
                    f"{name!r}: a name with '.', leading or trailing blanks or invisible "
                    "characters reads as another object's name in grants, contracts and "
                    "metrics; choose another",
                )
            )
    for ref in (*plan.scans, *plan.writes, *plan.created):
        if _outside(ref, lake_database):
            out.append(
                Violation(
                    "foreign_catalog",
                    f"{ref.catalog}.{ref.schema}.{ref.table} is not one of the lake's tables",
                )
            )
    changes = [op for op in plan.operators if op in _WRITES or op.startswith(_DDL_PREFIXES)]
    if stmt.kind == "read" and changes:
        out.append(
            Violation(
                "statement_class",
                "the statement reads as a query but the engine would change the lake",
            )
        )
    return out


def ambiguous_name(name: str) -> bool:
    """Whether a schema, table or view name would pass for another's where lakewarden names
    objects: tables are spelled "schema.table" (grants, contracts, metrics, the audit trail),
    and names are matched with surrounding blanks ignored. Found by trying: ``"staging.orders"``
    in ``main``, ``"orders "``, ``"orders\u00a0"``, a zero-width space."""
    return (
        "." in name
        or name != name.strip()
        or any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name)
    )


def grant_violations(agent: str, rules: AgentPolicy, plan: BoundPlan) -> list[Violation]:
    """Tables the plan reads or writes that the agent's grants do not cover."""
    out = [
        Violation("read", f"{agent} may not read {name}", table=name)
        for name in _names(plan.scans)
        if not rules.can_read(name)
    ]
    out += [
        Violation("write", f"{agent} may not write {name}", table=name)
        for name in _names(plan.writes)
        if not rules.can_write(name)
    ]
    if plan.created and not rules.ddl:
        out.append(Violation("ddl", f"{agent} may not run DDL"))
    out += [
        Violation("write", f"{agent} may not create, alter or drop {name}", table=name)
        for name in _names(plan.created)
        if not rules.can_write(name)
    ]
    return out


def ddl_refusals(stmt: Statement) -> list[Violation]:
    """DDL every agent is refused: objects shadowing built-ins, or of unknown target."""
    if stmt.kind != "ddl":
        return []
    if not stmt.tables_written:
        return [
            Violation(
                "ddl_target",
                f"{stmt.operation}: cannot tell which object this changes, so it cannot be "
                "checked against the policy; name the table, view or schema",
            )
        ]
    out = []
    # A lake macro of a built-in's name replaces the built-in for every later statement.
    if stmt.operation in {"CREATE MACRO", "CREATE FUNCTION"}:
        for name in stmt.tables_written:
            bare = name.rsplit(".", 1)[-1]
            if bare in ALLOWED_FUNCTIONS or bare in REFUSED_FUNCTIONS or _table_function(bare):
                out.append(
                    Violation(
                        "shadows_builtin",
                        f"{name} would shadow the built-in function {bare}(); choose another name",
                    )
                )
    return out


def _table_function(name: str) -> bool:
    return name in ALLOWED_TABLE_FUNCTIONS or name in REFUSED_TABLE_FUNCTIONS


def _names(refs: Iterable[TableRef]) -> list[str]:
    return list(dict.fromkeys(ref.name for ref in refs))


def _outside(ref: TableRef, lake_database: str) -> bool:
    if ref.catalog and ref.catalog != lake_database.lower():
        return True
    return ref.schema in _SYSTEM_SCHEMAS
