"""One SQL string -> one analysed :class:`Statement`.

DuckDB's own parser decides how many statements there are and of which type, so lakewarden and the
engine can never disagree on that (the ``COMMIT; <write>`` smuggling class). sqlglot then names the
tables read and written for summaries, spans and a first policy check; what the statement really
reads and writes is taken from the engine's plan by governance. Results are cached by statement
text (bounded in bytes) because parsing costs far more than a governed read of a small table.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import duckdb
import sqlglot
from sqlglot import exp

from lakewarden.analysis.cache import BoundedCache
from lakewarden.analysis.names import display_name
from lakewarden.analysis.text import first_keyword, sanitize, without_parameters
from lakewarden.errors import InvalidSQL, Violation

# Longest statement analysed, in characters (LAKEWARDEN_MAX_STATEMENT_CHARS). Checked before any
# parsing: analysis cost grows with the text (about 1 s for 100,000 characters of arithmetic on
# these machines), and a statement is analysed before its time limit starts.
MAX_SQL_CHARS = 100_000
# Analysed statements kept, by the bytes they hold (each keeps its text twice: as sent and
# sanitised). What repeats is a working set of query shapes; writes with literal values never
# repeat and only fill the cache. Measured under the soak (8 agents): about 600 new texts a
# minute, 0.6 MB a minute of cache (the estimate is within 15% of the real bytes), so 32 MB
# would take some 50 minutes to fill. 4 MB holds ~6,000 short reads or ~1,700
# 700-character INSERTs, and fills in the first minutes.
CACHE_BYTES = 4 * 1024 * 1024

_KINDS = {
    "SELECT": "read",
    "EXPLAIN": "read",
    "INSERT": "write",
    "UPDATE": "write",
    "DELETE": "write",
    "MERGE_INTO": "write",
    "CREATE": "ddl",
    "DROP": "ddl",
    "ALTER": "ddl",
    "CREATE_FUNC": "ddl",
}

# Words DuckDB's binder calls as functions when no column has the name (measured with 1.5.5;
# ``user`` too, left out because it is a common column name and only answers a constant).
KEYWORD_CALLS = frozenset(
    {"current_user", "current_role", "session_user", "current_schema", "current_catalog"}
)

_parser = threading.local()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Statement:
    """What lakewarden knows about one statement before running it."""

    text: str
    statement_type: str
    kind: str  # read | write | ddl | other
    operation: str
    tables_read: tuple[str, ...]
    tables_written: tuple[str, ...]
    functions: tuple[str, ...]  # table functions, as written
    calls: tuple[str, ...]  # calls of functions sqlglot does not know, as written
    # Calls sqlglot knows by its own name, and keywords the binder calls (``current_role``).
    implicit_calls: tuple[str, ...]
    qualifiers: tuple[str, ...]  # catalog and schema parts of every table reference
    keyword: str  # first word of the statement, comments skipped
    summary: str
    query_text: str
    parsed: bool  # False when sqlglot could not parse it: tables are then unknown
    # The query a CREATE VIEW or table MACRO stores, as SQL text: the engine plans DDL without
    # binding the stored query, so governance plans this text to see what it would read.
    body: str | None = None
    # The text the engine plans: parameters replaced by NULL (see text.without_parameters).
    plan_text: str = ""
    # What a MERGE's WHEN clauses may do (insert, update, delete): the engine reports only the
    # total of rows touched, so the gate bounds each kind from these and the row counts.
    merge_actions: tuple[str, ...] = ()

    @property
    def target(self) -> str | None:
        """The single table written, when there is exactly one (``db.collection.name``)."""
        return self.tables_written[0] if len(self.tables_written) == 1 else None

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.tables_written + self.tables_read))


def _split(sql: str) -> list[duckdb.Statement]:
    con = getattr(_parser, "con", None)
    if con is None:
        # A private in-memory connection per thread: parsing only, it never sees the lake. It is
        # locked down too: DuckDB's parser itself reads files for IMPORT DATABASE.
        con = _parser.con = duckdb.connect(
            ":memory:",
            config={
                "enable_external_access": False,
                "autoload_known_extensions": False,
                "autoinstall_known_extensions": False,
                "lock_configuration": True,
            },
        )
    try:
        return con.extract_statements(sql)
    except duckdb.Error as exc:
        raise InvalidSQL(f"the statement does not parse: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def analyze(sql: str, max_chars: int = MAX_SQL_CHARS) -> Statement:
    """Analyse one SQL string; raise :class:`InvalidSQL` unless it holds exactly one statement."""
    if not isinstance(sql, str):
        raise InvalidSQL("the statement must be a text string")
    if len(sql) > max_chars:
        raise InvalidSQL(
            f"the statement is {len(sql)} characters long; the limit is {max_chars} "
            "(pass large values as parameters)",
            [Violation("statement_size", "statement too long", measured=len(sql), limit=max_chars)],
        )
    found = _CACHE.get(sql)
    if found is None:
        try:
            found = _analyze(sql)
        except RecursionError as exc:
            # Python's recursion limit, reached by sqlglot on deeply nested expressions (about
            # 50 parentheses or 200 NOTs): the agent's statement, not the server, is at fault.
            raise InvalidSQL(
                "the statement is nested too deeply to analyse; flatten it",
                [Violation("nesting", "expressions nested too deeply")],
            ) from exc
        except InvalidSQL:
            raise
        except Exception as exc:
            # A statement the text analyser trips over (an input it has no case for) is the
            # agent's to rewrite, and must never surface as a server error.
            log.warning("analysis failed on a statement: %s: %s", type(exc).__name__, exc)
            raise InvalidSQL(
                f"the statement could not be analysed ({type(exc).__name__}); rewrite it",
                [Violation("unanalysable", "the text analyser failed on this statement")],
            ) from exc
        _CACHE.put(sql, found)
    return found


def _weigh(sql: str, stmt: Statement) -> int:
    return 2 * len(sql) + len(stmt.query_text) + len(stmt.summary)


_CACHE: BoundedCache[str, Statement] = BoundedCache(CACHE_BYTES, _weigh)


def _analyze(sql: str) -> Statement:
    if "\x00" in sql:
        raise InvalidSQL("the statement contains a NUL character")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidSQL(f"the statement is not valid UTF-8 text: {exc.reason}") from exc
    statements = _split(sql)
    if not statements:
        raise InvalidSQL("the SQL text is empty: send exactly one statement")
    if len(statements) > 1:
        raise InvalidSQL(
            f"the SQL text holds {len(statements)} statements; send exactly one per call "
            "(use an atomic batch for several)"
        )
    stmt_type = statements[0].type.name
    kind = _KINDS.get(stmt_type, "other")
    tree = _parse(sql)
    if tree is None:
        read: tuple[str, ...] = ()
        written: tuple[str, ...] = ()
        functions: tuple[str, ...] = ()
        calls: tuple[str, ...] = ()
        implicit_calls: tuple[str, ...] = ()
        qualifiers: tuple[str, ...] = ()
        body = None
        operation = stmt_type.replace("_INTO", "")
    else:
        read, written, functions = _tables(tree)
        calls = tuple(
            dict.fromkeys(
                str(node.name).lower()
                for node in tree.find_all(exp.Anonymous)
                if str(node.name).lower() not in functions
            )
        )
        implicit_calls = tuple(
            dict.fromkeys(
                [
                    _function_name(node)
                    for node in tree.find_all(exp.Func)
                    if not isinstance(node, exp.Anonymous)
                ]
                + [
                    str(col.name).lower()
                    for col in tree.find_all(exp.Column)
                    if not col.table and str(col.name).lower() in KEYWORD_CALLS
                ]
            )
        )
        qualifiers = tuple(
            dict.fromkeys(
                part.lower() for t in tree.find_all(exp.Table) for part in (t.catalog, t.db) if part
            )
        )
        operation = _operation(tree, stmt_type)
        body = _stored_query(tree)
    if kind == "read" and stmt_type == "SELECT" and written:
        kind = "write"  # e.g. a CTE wrapping a DML statement
    named = written if written else read
    summary = " ".join((operation, *named)) if named else operation
    return Statement(
        text=sql,
        statement_type=stmt_type,
        kind=kind,
        operation=operation,
        tables_read=read,
        tables_written=written,
        functions=functions,
        calls=calls,
        implicit_calls=implicit_calls,
        qualifiers=qualifiers,
        keyword=first_keyword(sql),
        summary=summary,
        query_text=sanitize(sql),
        parsed=tree is not None,
        body=body,
        plan_text=without_parameters(sql) or sql,
        merge_actions=_merge_actions(tree) if tree is not None else (),
    )


def _merge_actions(tree: exp.Expr) -> tuple[str, ...]:
    actions = []
    for when in tree.find_all(exp.When):
        then = when.args.get("then")
        if isinstance(then, exp.Insert):
            actions.append("insert")
        elif isinstance(then, exp.Update):
            actions.append("update")
        else:  # DELETE, DO NOTHING, ERROR, or anything sqlglot spells another way: assume delete
            actions.append("delete" if "NOTHING" not in str(then).upper() else "nothing")
    return tuple(dict.fromkeys(actions))


def _parse(sql: str) -> exp.Expr | None:
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.SqlglotError:
        return None
    if isinstance(tree, exp.Command):  # sqlglot's "I did not understand this" node
        return None
    return tree


def _stored_query(tree: exp.Expr) -> str | None:
    if not isinstance(tree, exp.Create):
        return None
    kind = str(tree.args.get("kind") or "").upper()
    query = tree.args.get("expression")
    if kind in {"VIEW", "MACRO", "FUNCTION"} and isinstance(query, exp.Query):
        func = tree.this
        params = (
            {str(p.name).lower() for p in func.expressions}
            if isinstance(func, exp.UserDefinedFunction)
            else set()
        )
        if params:
            # A table macro's parameters are columns of nothing on their own: planned as NULLs,
            # like statement parameters, the stored query shows the same scans and calls.
            query = query.transform(
                lambda node: (
                    exp.Null()
                    if isinstance(node, exp.Column)
                    and not node.table
                    and node.name.lower() in params
                    else node
                )
            )
        return query.sql(dialect="duckdb")
    return None


def _operation(tree: exp.Expr, stmt_type: str) -> str:
    if isinstance(tree, (exp.Create, exp.Drop)):
        verb = "CREATE" if isinstance(tree, exp.Create) else "DROP"
        return f"{verb} {str(tree.args.get('kind') or '').upper()}".strip()
    if isinstance(tree, exp.Alter):
        return f"ALTER {str(tree.args.get('kind') or 'TABLE').upper()}"
    if isinstance(tree, exp.Merge):
        return "MERGE"
    if isinstance(tree, exp.TruncateTable):
        return "TRUNCATE"
    if isinstance(tree, exp.Comment):
        return "COMMENT"
    return stmt_type.replace("_INTO", "")


def _targets(node: exp.Expr) -> list[exp.Table]:
    if isinstance(node, exp.TruncateTable):
        found = list(node.expressions)
    elif isinstance(node, exp.Drop):
        found = list(node.args.get("tables") or [node.this])
    elif isinstance(node, exp.Comment) and isinstance(node.this, exp.Column):
        # COMMENT ON COLUMN s.t.c changes table s.t
        col = node.this
        found = [exp.Table(this=col.args.get("table"), db=col.args.get("db"))]
    else:
        found = [node.this]
    if isinstance(node, exp.Alter):
        # ALTER ... RENAME TO w also claims the new name w
        found += [a.this for a in node.args.get("actions") or [] if isinstance(a, exp.AlterRename)]
    # INSERT INTO t (a, b) and CREATE TABLE t (a INT) wrap the table in a Schema node; CREATE
    # MACRO/FUNCTION wraps its name in a UserDefinedFunction node.
    found = [t.this if isinstance(t, (exp.Schema, exp.UserDefinedFunction)) else t for t in found]
    return [t for t in found if isinstance(t, exp.Table) and (t.name or t.db)]


def _table_name(table: exp.Table) -> str:
    if not table.name:  # a schema (CREATE SCHEMA x, DROP SCHEMA x): every table in it
        return display_name(table.db, "*")
    return display_name(table.db or None, table.name)


def _function_name(node: exp.Func) -> str:
    name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
    return str(name).lower()


def _tables(tree: exp.Expr) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    targets = [t for node in tree.walk() if _is_write(node) for t in _targets(node)]
    target_ids = {id(t) for t in targets}
    written = [_table_name(t) for t in targets]
    read: list[str] = []
    functions: list[str] = []
    for lateral in tree.find_all(exp.Lateral):  # FROM LATERAL f(...): a table function too
        if isinstance(lateral.this, exp.Func):
            functions.append(_function_name(lateral.this))
    for table in tree.find_all(exp.Table):
        if id(table) in target_ids:
            continue
        if isinstance(table.parent, exp.UserDefinedFunction):
            continue
        if table.this is None:  # a schema named alone
            continue
        if not isinstance(table.this, exp.Identifier):
            # FROM f(...): a table function. Anything else in that place is unknown and is
            # recorded under its node type, which no allow-list holds.
            func = table.this
            name = _function_name(func) if isinstance(func, exp.Func) else type(func).__name__
            functions.append(name)
            continue
        # A reference named like a CTE is taken as the CTE here; the engine's plan (checked by
        # governance) shows the real table when a CTE's body reads one of the same name.
        if not table.db and table.name.lower() in ctes:
            continue
        read.append(_table_name(table))
    return (
        tuple(dict.fromkeys(read)),
        tuple(dict.fromkeys(written)),
        tuple(dict.fromkeys(functions)),
    )


def _is_write(node: exp.Expr) -> bool:
    # DDL targets (views, macros, schemas) count as written: creating a view is changing the lake.
    return isinstance(
        node,
        (
            exp.Insert,
            exp.Update,
            exp.Delete,
            exp.Merge,
            exp.Alter,
            exp.Drop,
            exp.Create,
            exp.TruncateTable,
            exp.Comment,
        ),
    )
