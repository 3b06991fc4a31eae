"""Property: whatever allowed and forbidden fragments are composed into a statement, it is refused
exactly when it would read a table the agent may not read or call something not allowed.

The truth is known by construction (which fragments went in); the decision comes from the plan
authorization of a real lake.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lakewarden
from test_hostile import _seed

POLICY = Path(__file__).parent / "cases" / "hostile_policy.yaml"

# (fragment, forbidden?)
SOURCES = [
    ("public_orders", False),
    ("public_orders_v", False),
    ("range(3) r(id)", False),
    ("(SELECT 1 AS id)", False),
    ("unnest([1, 2]) u(id)", False),
    ("secret_salaries", True),
    ("secret_view", True),
    ("query('SELECT * FROM secret_salaries')", True),
    ("query_table('secret_salaries')", True),
    ("read_blob('meta.ducklake')", True),
    ("duckdb_settings()", True),
    ("ducklake_snapshots('lake')", True),
]
EXPRESSIONS = [
    ("1", False),
    ("abs(-2)", False),
    ("length(lower('A'))", False),
    ("count(*) OVER ()", False),
    ("length(current_setting('threads'))", True),
    ("length(getvariable('x'))", True),
    ("length(version())", True),
    ("length(current_database())", True),
]
# Table names, for a CTE named like the table its body reads (only the plan sees through that).
TABLES = [
    ("public_orders", False),
    ("public_orders_v", False),
    ("secret_salaries", True),
    ("secret_view", True),
]
# {e}: a select-list expression; {s}: a FROM item; {t}: a second FROM item; {n}: a table name.
WRAPPERS = [
    "WITH {n} AS (SELECT * FROM {n}) SELECT {e} FROM {n}",
    "WITH {n} AS (SELECT 1 AS id FROM {n}) SELECT {e} FROM {n}, {s}",
    "SELECT {e} FROM (WITH {n} AS (SELECT * FROM {n}) SELECT * FROM {n}) x",
    "SELECT {e} FROM {s}",
    "SELECT {e} FROM {s}, {t}",
    "WITH c AS (SELECT 1 AS id FROM {s}) SELECT {e} FROM c",
    "WITH secret_salaries AS (SELECT 1 AS id FROM {s}) SELECT {e} FROM secret_salaries",
    "WITH public_orders AS (SELECT 1 AS id FROM {s}) SELECT {e} FROM public_orders, {t}",
    "SELECT {e} FROM public_orders, LATERAL (SELECT 1 AS id FROM {s}) l",
    "SELECT {e} WHERE EXISTS (SELECT 1 FROM {s}) AND EXISTS (SELECT 1 FROM {t})",
    "SELECT {e} FROM (SELECT 1 AS id FROM {s}) a UNION ALL SELECT {e} FROM {t}",
    "SELECT {e} FROM public_orders WHERE 1 IN (SELECT 1 FROM {s} UNION SELECT 1 FROM {t})",
    "SELECT (SELECT count(*) FROM {s}) + (SELECT count(*) FROM {t}) AS n, {e}",
]


@pytest.fixture(scope="module")
def governed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lakewarden.Warden]:
    lake = tmp_path_factory.mktemp("properties") / "lake"
    _seed(lake)
    with lakewarden.open(lake, policy=POLICY, telemetry=lakewarden.Telemetry(env={})) as w:
        yield w


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    wrapper=st.sampled_from(WRAPPERS),
    first=st.sampled_from(SOURCES),
    second=st.sampled_from(SOURCES),
    table=st.sampled_from(TABLES),
    expression=st.sampled_from(EXPRESSIONS),
)
def test_decision_matches_what_the_statement_reads_and_calls(
    governed: lakewarden.Warden,
    wrapper: str,
    first: tuple[str, bool],
    second: tuple[str, bool],
    table: tuple[str, bool],
    expression: tuple[str, bool],
) -> None:
    sql = wrapper.format(e=expression[0], s=first[0], t=second[0], n=table[0])
    forbidden = (
        expression[1]
        or ("{s}" in wrapper and first[1])
        or ("{t}" in wrapper and second[1])
        or ("{n}" in wrapper and table[1])
    )
    with governed.session("analyst") as s:
        if forbidden:
            with pytest.raises(lakewarden.PolicyDenied):
                s.sql(sql)
        else:
            assert s.sql(sql).kind == "read"
