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
changes (a table created earlier in an atomic batch) are seen. The documents are read into typed
values by :mod:`lakewarden.analysis.plan`.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from lakewarden.analysis.plan import BoundPlan, ParseTree, read_bound_plan, read_parse_tree
from lakewarden.errors import ExecutionError, Violation
from lakewarden.store import faults


class PlanUnavailable(Exception):
    """The engine would not describe the statement; ``reason`` says why, in one line."""

    def __init__(self, reason: str, *, binding: bool, error_type: str = "engine") -> None:
        super().__init__(reason)
        self.reason = reason
        self.binding = binding  # True: the statement does not bind (unknown table, type error)
        self.error_type = error_type  # the engine's class of error: catalog, binder, ...


def parse_tree(cur: duckdb.DuckDBPyConnection, sql: str) -> ParseTree:
    """DuckDB's parse tree of a SELECT statement (``PlanUnavailable`` for any other kind)."""
    return read_parse_tree(_ask(cur, "SELECT json_serialize_sql(?)", sql))


def bound_plan(cur: duckdb.DuckDBPyConnection, sql: str) -> BoundPlan:
    """Bind and plan ``sql`` on ``cur`` and describe the plan; nothing is executed."""
    return read_bound_plan(_ask(cur, "SELECT json_serialize_plan(?)", sql))


class Planner:
    """The engine's descriptions of statements, on one cursor (see
    :class:`lakewarden.governance.grants.Describer`)."""

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._cur = cur

    def parse_tree(self, sql: str) -> ParseTree | None:
        """None when the engine has no parse tree for it (not a SELECT: DESCRIBE, SHOW)."""
        try:
            return parse_tree(self._cur, sql)
        except PlanUnavailable:
            return None

    def bound_plan(self, sql: str) -> BoundPlan | None:
        """None when the engine cannot describe such a statement before running it.

        A statement that does not bind (unknown table or column, type error) would fail the
        same way when run, so it fails now, as :class:`ExecutionError`, and nothing ran.
        """
        try:
            return bound_plan(self._cur, sql)
        except PlanUnavailable as exc:
            if not exc.binding:
                return None
            rule = exc.error_type.replace(" ", "_") + "_error"
            raise ExecutionError(
                f"{exc.reason}; nothing was committed", [Violation(rule, exc.reason)]
            ) from exc


def _ask(cur: duckdb.DuckDBPyConnection, query: str, sql: str) -> dict[str, Any]:
    try:
        row = cur.execute(query, [sql]).fetchone()
    except duckdb.InterruptException:
        raise  # the statement's time limit, which covers planning too: the caller reports it
    except duckdb.Error as exc:
        fault = faults.storage_failure(exc)
        if fault is not None:  # the catalog is down, not the statement wrong
            raise fault from exc
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
        fault = faults.storage_failure(Exception(str(doc.get("error_message", ""))))
        if fault is not None:
            raise fault
        message = _first_line(str(doc.get("error_message", "")))
        # "not implemented": the engine cannot describe this kind of statement (PIVOT without
        # an IN list is two statements, MULTI); every other kind of error is a binding error.
        error_type = str(doc.get("error_type") or "engine")
        binding = error_type != "not implemented"
        raise PlanUnavailable(message, binding=binding, error_type=error_type)
    return doc


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "unknown error"
