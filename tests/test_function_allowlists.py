"""Every function the engine registers is classified on purpose: allowed, or refused.

Generated from ``duckdb_functions()`` of the engine lakewarden runs (DuckDB with DuckLake
loaded): a DuckDB or DuckLake upgrade that registers a new function fails here until someone
puts it on an allow-list or a refused list, so an upgrade cannot silently open a hole (and, as
anything not allowed is refused, cannot silently break agents' statements either).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import lakewarden
from lakewarden.governance.allowlists import (
    ALLOWED_FUNCTIONS,
    ALLOWED_TABLE_FUNCTIONS,
    PARSE_ONLY,
    REFUSED_FUNCTION_PREFIX,
    REFUSED_FUNCTIONS,
    REFUSED_TABLE_FUNCTIONS,
)

CORPUS = Path(__file__).parent / "cases" / "hostile.yaml"
_TABLE_KINDS = ("table", "table_macro")
_VALUE_KINDS = ("scalar", "aggregate", "macro")


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    lake = tmp_path_factory.mktemp("functions") / "lake"
    with lakewarden.open(lake, telemetry=lakewarden.Telemetry(env={})) as warden:
        cur = warden.engine.cursor()
        rows = cur.execute(
            "SELECT DISTINCT lower(function_name), function_type FROM duckdb_functions() "
            "WHERE function_type <> 'pragma'"
        ).fetchall()
        cur.close()
    out: dict[str, set[str]] = {"table": set(), "value": set()}
    for name, kind in rows:
        out["table" if kind in _TABLE_KINDS else "value"].add(name)
        assert kind in _TABLE_KINDS + _VALUE_KINDS, f"unknown function type {kind} of {name}"
    yield out


def test_every_table_function_is_classified(registered: dict[str, set[str]]) -> None:
    known = ALLOWED_TABLE_FUNCTIONS | REFUSED_TABLE_FUNCTIONS.keys()
    unclassified = sorted(registered["table"] - known)
    assert not unclassified, (
        f"table functions neither allowed nor refused: {unclassified}; classify them in "
        "lakewarden/governance/allowlists.py and add them to cases/hostile.yaml"
    )


def test_every_scalar_aggregate_and_window_function_is_classified(
    registered: dict[str, set[str]],
) -> None:
    unclassified = sorted(
        name
        for name in registered["value"]
        if name not in ALLOWED_FUNCTIONS
        and name not in REFUSED_FUNCTIONS
        and not name.startswith(REFUSED_FUNCTION_PREFIX)
    )
    assert not unclassified, (
        f"functions neither allowed nor refused: {unclassified}; classify them in "
        "lakewarden/governance/functions_allowed.txt or allowlists.REFUSED_FUNCTIONS"
    )


def test_no_function_is_both_allowed_and_refused() -> None:
    assert not ALLOWED_FUNCTIONS & REFUSED_FUNCTIONS.keys()
    assert not ALLOWED_TABLE_FUNCTIONS & REFUSED_TABLE_FUNCTIONS.keys()


def test_the_lists_name_only_registered_functions(registered: dict[str, set[str]]) -> None:
    """A stale entry (a function DuckDB dropped or renamed) is noise that hides real changes."""
    assert not (REFUSED_TABLE_FUNCTIONS.keys() - registered["table"])
    assert not (ALLOWED_TABLE_FUNCTIONS - registered["table"])
    assert not (ALLOWED_FUNCTIONS - registered["value"] - PARSE_ONLY)
    assert not (REFUSED_FUNCTIONS.keys() - registered["value"])


def test_the_hostile_corpus_tries_every_refused_table_function() -> None:
    tried = set(yaml.safe_load(CORPUS.read_text())["table_functions"])
    assert REFUSED_TABLE_FUNCTIONS.keys() <= tried
