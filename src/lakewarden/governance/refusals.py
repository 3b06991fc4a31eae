"""Statement classes refused for every agent, whatever its policy says, judged on the text.

The engine's plan is then authorized against allow-lists (:mod:`lakewarden.governance.authorize`)
and the engine connection is hardened too (see :mod:`lakewarden.store.engine`): DuckLake needs
file access inside the lake folder, where COPY, glob() and read_parquet() would otherwise work.
"""

from __future__ import annotations

from lakewarden.analysis.names import INTERNAL_SCHEMA
from lakewarden.analysis.statement import Statement
from lakewarden.errors import Violation

REFUSED_TYPES = {
    "ATTACH": "attaching databases",
    "DETACH": "detaching databases",
    "COPY": "COPY (reads or writes files)",
    "COPY_DATABASE": "COPY FROM DATABASE",
    "EXPORT": "EXPORT/IMPORT DATABASE",
    "LOAD": "LOAD of extensions",
    "EXTENSION": "INSTALL of extensions",
    "UPDATE_EXTENSIONS": "UPDATE EXTENSIONS",
    "SET": "SET/RESET of settings",
    "VARIABLE_SET": "SET VARIABLE",
    "PRAGMA": "PRAGMA",
    "TRANSACTION": "transaction control (lakewarden owns transactions: use an atomic batch)",
    "CALL": "CALL of procedures",
    "PREPARE": "PREPARE",
    "EXECUTE": "EXECUTE",
    "VACUUM": "VACUUM",
    "ANALYZE": "ANALYZE",
    "LOGICAL_PLAN": "logical plans",
    "MULTI": "multi-statements",
    "RELATION": "relations",
    "INVALID": "unknown statements",
}

# Statements DuckDB rewrites into another type (``PRAGMA database_list`` parses as a SELECT).
REFUSED_KEYWORDS = {
    "PRAGMA": "PRAGMA",
    "CHECKPOINT": "CHECKPOINT",
    "FORCE": "FORCE CHECKPOINT",
    "USE": "USE (switching databases)",
    "IMPORT": "EXPORT/IMPORT DATABASE",
    "EXPORT": "EXPORT/IMPORT DATABASE",
}


def refusals(stmt: Statement, lake_database: str) -> list[Violation]:
    """Why ``stmt`` is refused for any agent (empty list: not refused by the defaults)."""
    out: list[Violation] = []
    what = REFUSED_TYPES.get(stmt.statement_type) or REFUSED_KEYWORDS.get(stmt.keyword)
    if what:
        out.append(Violation("statement_class", f"{what} is not allowed for agents"))
    # Table functions and function calls are judged against the allow-lists by
    # governance.authorize, on DuckDB's own parse tree where there is one.
    foreign = [q for q in stmt.qualifiers if _foreign(q, lake_database)]
    for name in foreign:
        out.append(
            Violation("foreign_catalog", f"{name} is not part of the lake; only its tables count")
        )
    for table in stmt.tables:
        if "/" in table or "\\" in table or table.rsplit(".", 1)[-1] in _FILE_SUFFIXES:
            out.append(Violation("file_access", f"{table!r} names a file, not a table"))
    if not stmt.parsed and not out:
        out.append(
            Violation(
                "unanalysable",
                "the statement could not be analysed, so its tables cannot be checked against "
                "the policy; rewrite it in plain SQL",
            )
        )
    return out


_FILE_SUFFIXES = {"csv", "tsv", "parquet", "json", "ndjson", "jsonl", "txt", "gz", "zst", "db"}
_INTERNAL = ("lw_state", "__ducklake_metadata_", "system", "temp", "memory")


def _foreign(qualifier: str, lake_database: str) -> bool:
    if qualifier == lake_database.lower():
        return False
    return qualifier == INTERNAL_SCHEMA or qualifier.startswith(_INTERNAL)
