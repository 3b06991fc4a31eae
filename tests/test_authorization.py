"""Plan authorization keeps legitimate statements working (cases/authorized.yaml), applies to
open mode for the dangerous classes, and lets admins run schema DDL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

import lakewarden
from lakewarden.store import catalog
from test_hostile import _seed

CASES = Path(__file__).parent / "cases"
POLICY = CASES / "hostile_policy.yaml"


@pytest.fixture(scope="module")
def governed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lakewarden.Warden]:
    lake = tmp_path_factory.mktemp("authorized") / "lake"
    _seed(lake)
    with lakewarden.open(lake, policy=POLICY, telemetry=lakewarden.Telemetry(env={})) as w:
        yield w


@contextmanager
def _admin_and_analyst(tmp_path: Path) -> Iterator[lakewarden.Warden]:
    """A seeded lake where admin may do anything and analyst may read public_* only."""
    _seed(tmp_path / "lake")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nagents:\n"
        "  admin: {read: ['*'], write: ['*'], ddl: true}\n"
        "  analyst: {read: ['public_*']}\n"
    )
    with lakewarden.open(
        tmp_path / "lake", policy=policy, telemetry=lakewarden.Telemetry(env={})
    ) as w:
        yield w


def _cases() -> list[Any]:
    cases = yaml.safe_load((CASES / "authorized.yaml").read_text())
    return [pytest.param(c, id=c["id"]) for c in cases]


@pytest.mark.parametrize("case", _cases())
def test_authorized_statement_runs(governed: lakewarden.Warden, case: dict[str, Any]) -> None:
    with governed.session(case.get("agent", "analyst")) as s:
        if case.get("expect") == "blocked":
            with pytest.raises(lakewarden.QualityGateFailed):
                s.sql(case["sql"])
            return
        result = s.sql(case["sql"])
    assert result.kind in {"read", "write", "ddl"}


@pytest.fixture
def open_lake(tmp_path: Path) -> Iterator[lakewarden.Warden]:
    _seed(tmp_path / "lake")
    with lakewarden.open(tmp_path / "lake", telemetry=lakewarden.Telemetry(env={})) as w:
        yield w


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        pytest.param(
            "SELECT * FROM LATERAL read_blob('meta.ducklake')", "table_function", id="read-blob"
        ),
        pytest.param(
            "SELECT * FROM LATERAL ducklake_expire_snapshots('lake', older_than => now())",
            "table_function",
            id="expire-snapshots",
        ),
        pytest.param("SELECT * FROM enable_logging()", "table_function", id="enable-logging"),
        pytest.param("SELECT current_setting('allowed_directories')", "function", id="setting"),
        pytest.param("SELECT * FROM duckdb_settings()", "table_function", id="settings-table"),
        pytest.param(
            "CREATE MACRO range(a) AS TABLE SELECT 1 AS x", "shadows_builtin", id="macro-range"
        ),
        pytest.param("SELECT * FROM lakewarden.audit", "foreign_catalog", id="own-schema"),
    ],
)
def test_open_mode_still_refuses_dangerous_classes(
    open_lake: lakewarden.Warden, sql: str, rule: str
) -> None:
    before = catalog.current_snapshot(open_lake.engine.cursor())
    with open_lake.session("anyone") as s, pytest.raises(lakewarden.PolicyDenied) as info:
        s.sql(sql)
    assert rule in {v.rule for v in info.value.violations}, info.value.to_dict()
    assert catalog.current_snapshot(open_lake.engine.cursor()) == before


def test_admin_creates_and_drops_schemas(open_lake: lakewarden.Warden) -> None:
    with open_lake.session("admin") as s:
        assert s.sql("CREATE SCHEMA staging").kind == "ddl"
        s.sql("CREATE TABLE staging.t (a INT)")
        s.sql("INSERT INTO staging.t VALUES (1)")
        assert s.sql("SELECT * FROM staging.t").rows == [(1,)]
        s.sql("DROP TABLE staging.t")
        assert s.sql("DROP SCHEMA staging").kind == "ddl"


def test_a_view_cannot_widen_another_agents_reads(tmp_path: Path) -> None:
    """A view readable by name still reads what it reads: the plan shows the real table."""
    with _admin_and_analyst(tmp_path) as w:
        with w.session("admin") as s:
            s.sql("CREATE VIEW public_window AS SELECT * FROM secret_salaries")
            s.sql("CREATE MACRO public_peek() AS TABLE SELECT * FROM secret_salaries")
            s.sql("CREATE MACRO public_double(a) AS a * 2")
        with w.session("analyst") as s:
            # a macro stored in the lake is not on the function allow-list: nobody's reads can
            # be routed through code another agent wrote
            with pytest.raises(lakewarden.PolicyDenied) as info:
                s.sql("SELECT public_double(2)")
            assert {v.rule for v in info.value.violations} == {"function"}
            with pytest.raises(lakewarden.PolicyDenied) as info:
                s.sql("SELECT * FROM public_window")
            assert {v.table for v in info.value.violations} == {"secret_salaries"}
            with pytest.raises(lakewarden.PolicyDenied):
                s.sql("SELECT * FROM public_peek()")


def test_verdicts_follow_catalog_changes(tmp_path: Path) -> None:
    """A remembered verdict is not reused after DDL changed what a name means."""
    with _admin_and_analyst(tmp_path) as w:
        with w.session("admin") as s:
            s.sql("CREATE VIEW public_later AS SELECT * FROM public_orders")
        with w.session("analyst") as s:
            assert s.sql("SELECT count(*) FROM public_later").rows == [(20,)]
        with w.session("admin") as s:
            s.sql("CREATE OR REPLACE VIEW public_later AS SELECT * FROM secret_salaries")
        with w.session("analyst") as s, pytest.raises(lakewarden.PolicyDenied):
            s.sql("SELECT count(*) FROM public_later")


def test_batch_sees_its_own_ddl(open_lake: lakewarden.Warden) -> None:
    with open_lake.session("admin") as s:
        result = s.batch(["CREATE TABLE fresh (a INT)", "INSERT INTO fresh VALUES (1)"])
    assert result.snapshot_id is not None


@pytest.mark.parametrize(
    ("agent", "contained"), [("analyst", True), ("writer", False)], ids=["reader", "writer"]
)
def test_second_wall_rolls_back_what_a_reader_got_past_authorization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: str, contained: bool
) -> None:
    """With authorization switched off, a read-only agent's statement still cannot commit."""
    _seed(tmp_path / "lake")
    with lakewarden.open(
        tmp_path / "lake", policy=POLICY, telemetry=lakewarden.Telemetry(env={})
    ) as w:
        monkeypatch.setattr(w.grants, "check", lambda *args, **kwargs: [])
        cur = w.engine.cursor()
        before = catalog.current_snapshot(cur)
        with w.session(agent) as s:
            s.sql("SELECT * FROM ducklake_flush_inlined_data('lake')")
        changed = catalog.current_snapshot(cur) != before
    assert changed is not contained


@pytest.mark.parametrize(
    ("sql", "params", "rows"),
    [
        pytest.param("SELECT * FROM range(?)", [2], [(0,), (1,)], id="table-function-argument"),
        pytest.param("SELECT list_value(?, ?)", [1, 2], [([1, 2],)], id="function-arguments"),
        pytest.param("SELECT id FROM public_orders WHERE id = $1", [3], [(3,)], id="dollar-number"),
        pytest.param(
            "SELECT id FROM public_orders WHERE id = $n", {"n": 4}, [(4,)], id="dollar-name"
        ),
        pytest.param("SELECT id FROM public_orders LIMIT ?", [1], [(1,)], id="limit"),
        pytest.param("SELECT '?' AS q WHERE ? = 1", [1], [("?",)], id="question-mark-in-string"),
    ],
)
def test_statements_with_parameters_are_planned(
    governed: lakewarden.Warden, sql: str, params: Any, rows: list[Any]
) -> None:
    with governed.session("analyst") as s:
        assert s.sql(sql, params).rows == rows


def test_a_parameter_cannot_smuggle_sql(governed: lakewarden.Warden) -> None:
    with governed.session("analyst") as s, pytest.raises(lakewarden.PolicyDenied):
        s.sql("SELECT * FROM query(?)", ["SELECT * FROM secret_salaries"])


def test_statement_size_cap_is_a_setting_checked_before_parsing(tmp_path: Path) -> None:
    settings = lakewarden.Settings.from_env({"LAKEWARDEN_MAX_STATEMENT_CHARS": "1000"})
    with (
        lakewarden.open(
            tmp_path / "lake", settings=settings, telemetry=lakewarden.Telemetry(env={})
        ) as w,
        w.session("anyone") as s,
    ):
        assert s.sql("SELECT " + "1 + " * 200 + "1").rows == [(201,)]
        # unparseable beyond the cap: refused for its size, before any parser sees it
        with pytest.raises(lakewarden.InvalidSQL) as info:
            s.sql("SELECT (((" + "x" * 1000)
    (violation,) = info.value.violations
    assert (violation.rule, violation.limit) == ("statement_size", 1000)


def test_truncate_is_a_gated_write_with_fresh_signals(open_lake: lakewarden.Warden) -> None:
    with open_lake.session("admin") as s:
        result = s.sql("TRUNCATE public_orders")
    assert result.kind == "write" and result.snapshot_id is not None
    assert result.signals["public_orders"].rows == 0
    assert result.signals["public_orders"].rows_deleted == 20


def test_planning_counts_against_the_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning runs under the statement's deadline (here made slow on purpose)."""
    from lakewarden.store import plan

    def slow(cur: Any, text: str) -> Any:
        cur.execute("SELECT count(*) FROM range(100000000000) a").fetchall()
        raise AssertionError("not interrupted")

    monkeypatch.setattr(plan, "bound_plan", slow)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nagents:\n  quick: {read: ['*'], timeout_s: 0.5}\n")
    with (
        lakewarden.open(
            tmp_path / "lake", policy=policy, telemetry=lakewarden.Telemetry(env={})
        ) as w,
        w.session("quick") as s,
        pytest.raises(lakewarden.StatementTimeout),
    ):
        s.sql("SELECT 1")
