"""Statement analysis: cases kept as data in cases/analysis.txt."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lakewarden import InvalidSQL
from lakewarden.analysis import analyze
from lakewarden.analysis import statement as statement_module


def _cases() -> list[pytest.ParameterSet]:
    out = []
    for line in (Path(__file__).parent / "cases" / "analysis.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        ident, sql, kind, op, read, written, summary = (p.strip() for p in line.split("|"))
        split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
        out.append(pytest.param(sql, kind, op, split(read), split(written), summary, id=ident))
    return out


@pytest.mark.parametrize(("sql", "kind", "operation", "read", "written", "summary"), _cases())
def test_analysis_cases(
    sql: str,
    kind: str,
    operation: str,
    read: tuple[str, ...],
    written: tuple[str, ...],
    summary: str,
) -> None:
    stmt = analyze(sql)
    assert (stmt.kind, stmt.operation) == (kind, operation)
    assert stmt.tables_read == read
    assert stmt.tables_written == written
    assert stmt.summary == summary


@pytest.mark.parametrize(
    ("sql", "text"),
    [
        pytest.param(
            "SELECT * FROM t WHERE a = 'secret' AND b = 42",
            "SELECT * FROM t WHERE a = ? AND b = ?",
            id="string-and-number",
        ),
        pytest.param(
            "INSERT INTO t VALUES (1.5, 'it''s', x'ff');",
            "INSERT INTO t VALUES (?, ?, ?)",
            id="escaped-quote-and-blob",
        ),
        pytest.param(
            "SELECT a FROM t WHERE b = ?", "SELECT a FROM t WHERE b = ?", id="params-kept"
        ),
    ],
)
def test_query_text_hides_literals(sql: str, text: str) -> None:
    assert analyze(sql).query_text == text


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("   -- only a comment\n", "empty", id="comment-only"),
        pytest.param("SELECT 1; SELECT 2", "2 statements", id="two-statements"),
        pytest.param("COMMIT; DELETE FROM orders", "2 statements", id="commit-smuggling"),
        pytest.param("SELEC 1", "does not parse", id="syntax-error"),
        pytest.param("SELECT '\x00'", "NUL", id="nul-byte"),
        pytest.param("SELECT " + "1 + " * 300_000 + "1", "limit", id="too-long"),
    ],
)
def test_invalid_sql(sql: str, message: str) -> None:
    with pytest.raises(InvalidSQL, match=message):
        analyze(sql)


def test_analysis_is_cached_by_text() -> None:
    statement_module._CACHE.clear()
    first = analyze("SELECT count(*) FROM cached_table")
    second = analyze("SELECT count(*) FROM cached_table")
    assert first is second
    assert len(statement_module._CACHE) == 1


def test_analysis_cache_is_bounded_in_bytes() -> None:
    cache = statement_module._CACHE
    cache.clear()
    for i in range(400):  # 400 statements of ~90 kB: ~72 MB of text if all were kept
        analyze(f"SELECT {i} AS n, '{'x' * 90_000}' AS pad")
    assert cache.size_bytes <= statement_module.CACHE_BYTES
    assert len(cache) < 400


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("SELECT " + "(" * 60 + "1" + ")" * 60, id="nested-parentheses"),
        pytest.param("SELECT " + "NOT " * 200 + "true", id="many-nots"),
        pytest.param("SELECT " + "- " * 3000 + "1", id="many-minus"),
    ],
)
def test_deep_nesting_is_invalid_sql_not_a_crash(sql: str) -> None:
    with pytest.raises(InvalidSQL) as info:
        analyze(sql)
    assert len(info.value.message) < 300


_FRAGMENTS = [
    "SELECT",
    "FROM",
    "WHERE",
    "(",
    ")",
    "NOT",
    "1",
    "'x'",
    ",",
    "t",
    "CREATE",
    "SCHEMA",
    "DROP",
    "TABLE",
    "MACRO",
    "AS",
    "WITH",
    "LATERAL",
    "query",
    "TRUNCATE",
    "COMMENT",
    "ON",
    "COLUMN",
    "IS",
    "+",
    "-",
    "*",
    ".",
    "?",
    "$1",
    "::",
    "[",
    "]",
    "{",
    "}",
    ":",
    ";",
    "--",
    "/*",
    "*/",
    '"',
    "PIVOT",
    "USING",
    "INSERT",
    "INTO",
    "VALUES",
    "DESCRIBE",
    "SUMMARIZE",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=40), st.integers(0, 80))
def test_analysis_fails_only_with_invalid_sql(words: list[str], depth: int) -> None:
    """Whatever the text, analysis answers a Statement or InvalidSQL, never another error."""
    sql = "(" * depth + " ".join(words) + ")" * depth
    try:
        analyze(sql)
    except InvalidSQL as exc:
        assert exc.message
