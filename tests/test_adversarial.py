"""Adversarial statements (cases/adversarial.yaml): refused, clearly, with nothing changed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import lakewarden
from lakewarden.store import catalog

CASES = Path(__file__).parent / "cases"
ERRORS = {
    "invalid": lakewarden.InvalidSQL,
    "denied": lakewarden.PolicyDenied,
    "timeout": lakewarden.StatementTimeout,
}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lakewarden.Warden]:
    path = tmp_path_factory.mktemp("adversarial") / "lake"
    with lakewarden.open(path, telemetry=lakewarden.Telemetry(env={})) as w, w.session("seed") as s:
        s.sql("CREATE TABLE orders (order_id BIGINT, email VARCHAR)")
        s.sql("INSERT INTO orders VALUES (1, 'a'), (2, 'b')")
        s.sql("CREATE TABLE customers (id INT, name VARCHAR)")
        s.sql("CREATE VIEW customers_v AS SELECT * FROM customers")
        s.sql("CREATE TABLE secret (token VARCHAR)")
        s.sql("INSERT INTO secret VALUES ('s3cr3t')")
    warden = lakewarden.open(
        path, policy=CASES / "adversarial_policy.yaml", telemetry=lakewarden.Telemetry(env={})
    )
    yield warden
    warden.close()


def _state(warden: lakewarden.Warden) -> tuple[int, str]:
    cur = warden.engine.cursor()
    digest = hashlib.sha256()
    for table in ("orders", "customers", "secret"):
        digest.update(repr(cur.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()).encode())
    tables = cur.execute(
        "SELECT database_name, schema_name, table_name FROM duckdb_tables() ORDER BY ALL"
    ).fetchall()
    digest.update(repr(tables).encode())
    return catalog.current_snapshot(cur), digest.hexdigest()


def _cases() -> list[Any]:
    cases = yaml.safe_load((CASES / "adversarial.yaml").read_text())
    extra = [
        {"id": "very-long-input", "error": "invalid", "sql": "SELECT " + "1 + " * 400_000 + "1"},
        {"id": "non-utf8-surrogate", "error": "invalid", "sql": "SELECT '\udcff'"},
        {"id": "nul-byte", "error": "invalid", "sql": "SELECT 1\x00; DROP TABLE orders"},
    ]
    return [pytest.param(c, id=c["id"]) for c in cases + extra]


def test_there_are_at_least_30_cases() -> None:
    assert len(_cases()) >= 30


@pytest.mark.parametrize("case", _cases())
def test_adversarial_statement_is_refused(lake: lakewarden.Warden, case: dict[str, Any]) -> None:
    before = _state(lake)
    with lake.session(case.get("agent", "etl")) as s, pytest.raises(ERRORS[case["error"]]) as info:
        s.sql(case["sql"])
    error = info.value
    assert error.message and len(error.message) < 2000
    if "rule" in case:
        assert case["rule"] in {v.rule for v in error.violations}, error.to_dict()
    assert _state(lake) == before, "the lake changed"


def test_bytes_are_not_sql(lake: lakewarden.Warden) -> None:
    with lake.session("etl") as s, pytest.raises(lakewarden.InvalidSQL, match="text"):
        s.sql(b"SELECT 1")  # type: ignore[arg-type]


def test_refusals_are_audited(lake: lakewarden.Warden) -> None:
    with lake.session("etl") as s, pytest.raises(lakewarden.PolicyDenied):
        s.sql("ATTACH 'x.duckdb' AS audited_attempt")
    (record,) = [
        r
        for r in lake.audit(agent="etl", limit=500)
        if r["summary"] == "ATTACH" and r["violations"] and "attach" in r["violations"][0]["detail"]
    ][:1]
    assert record["decision"] == "denied" and record["snapshot_id"] is None
