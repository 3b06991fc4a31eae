"""Bad input: a structured error, nothing committed, and a span that says what went wrong."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import lakewarden
from lakewarden.store import catalog


@pytest.fixture
def seeded(warden: lakewarden.Warden) -> lakewarden.Warden:
    with warden.session("seed") as s:
        s.sql("CREATE TABLE orders (id BIGINT NOT NULL, email VARCHAR)")
        s.sql("INSERT INTO orders VALUES (1, 'a'), (2, NULL)")
    return warden


@pytest.mark.parametrize(
    ("sql", "error", "code"),
    [
        pytest.param("", lakewarden.InvalidSQL, "invalid_sql", id="empty"),
        pytest.param(
            "INSERT INTO orders VALUES (3, 'c'); DELETE FROM orders",
            lakewarden.InvalidSQL,
            "invalid_sql",
            id="two-statements",
        ),
        pytest.param(
            "INSERT INTO orders VALUS (3, 'c')",
            lakewarden.InvalidSQL,
            "invalid_sql",
            id="syntax-error",
        ),
        pytest.param(
            "INSERT INTO missing VALUES (3, 'c')",
            lakewarden.ExecutionError,
            "execution_failed",
            id="unknown-table",
        ),
        pytest.param(
            "INSERT INTO orders VALUES ('three', 'c')",
            lakewarden.ExecutionError,
            "execution_failed",
            id="type-error",
        ),
        pytest.param(
            "INSERT INTO orders VALUES (NULL, 'c')",
            lakewarden.ExecutionError,
            "execution_failed",
            id="constraint",
        ),
        pytest.param(
            "ATTACH 'other.duckdb' AS other", lakewarden.PolicyDenied, "policy_denied", id="attach"
        ),
        pytest.param(
            "SELECT * FROM read_csv('/etc/passwd')",
            lakewarden.PolicyDenied,
            "policy_denied",
            id="file-read",
        ),
    ],
)
def test_bad_statement_is_refused_cleanly(
    seeded: lakewarden.Warden,
    spans: InMemorySpanExporter,
    sql: str,
    error: type[lakewarden.LakewardenError],
    code: str,
) -> None:
    cur = seeded.engine.cursor()
    before_snap = catalog.current_snapshot(cur)
    before_rows = cur.execute("SELECT * FROM orders ORDER BY id").fetchall()
    spans.clear()
    with seeded.session("careless") as s, pytest.raises(error) as info:
        s.sql(sql)
    body = info.value.to_dict()
    assert body["code"] == code and body["message"]
    assert catalog.current_snapshot(cur) == before_snap
    assert cur.execute("SELECT * FROM orders ORDER BY id").fetchall() == before_rows
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == code
    assert (span.attributes or {})["gen_ai.agent.name"] == "careless"
    assert seeded.table("orders").rows == 2


def test_timeout_interrupts_and_leaves_session_usable(lake_dir, spans) -> None:  # type: ignore[no-untyped-def]
    settings = lakewarden.Settings(statement_timeout_s=0.5)
    with (
        lakewarden.open(
            lake_dir,
            settings=settings,
            telemetry=lakewarden.Telemetry(span_exporters=[spans], env={}),
        ) as w,
        w.session("runaway") as s,
    ):
        with pytest.raises(lakewarden.StatementTimeout):
            s.sql(
                "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
                "SELECT count(*) FROM r"
            )
        assert s.sql("SELECT 42").rows == [(42,)]
    assert (spans.get_finished_spans()[0].attributes or {})["error.type"] == "timeout"


def test_telemetry_failure_never_breaks_a_query(seeded: lakewarden.Warden) -> None:
    class Broken:
        def record(self, *a: object, **k: object) -> None:
            raise RuntimeError("exporter down")

        add = record

    seeded.instruments.duration = Broken()  # type: ignore[assignment]
    seeded.instruments.statements = Broken()  # type: ignore[assignment]
    with seeded.session("a") as s:
        assert s.sql("SELECT count(*) FROM orders").rows == [(2,)]


def test_a_bug_is_not_dressed_as_an_engine_error(
    seeded: lakewarden.Warden,
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only engine errors become ``execution_failed``: a bug in lakewarden keeps its own type
    (the intakes answer it as a 500 internal_error), is traced as failed and audited, and the
    write it interrupted is rolled back."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the gate")

    monkeypatch.setattr(seeded.stages.gate, "judge", broken)
    with seeded.session("a") as s:
        with pytest.raises(RuntimeError, match="a bug in the gate"):
            s.sql("INSERT INTO orders VALUES (3, 'c')")
        monkeypatch.undo()
        assert s.sql("SELECT count(*) FROM orders").rows == [(2,)]  # nothing was committed
        s.sql("INSERT INTO orders VALUES (3, 'c')")  # and the write lock was released
    (failed,) = [
        sp
        for sp in spans.get_finished_spans()
        if sp.name == "INSERT orders" and sp.status.status_code is StatusCode.ERROR
    ]
    assert (failed.attributes or {})["error.type"] == "RuntimeError"
    assert (failed.attributes or {})["lakewarden.decision"] == "failed"
    records = seeded.audit("a")
    assert [r["decision"] for r in records if r["operation"] == "INSERT"] == [
        "allowed",
        "failed",
    ]


def test_a_failure_to_measure_does_not_fail_a_committed_write(
    seeded: lakewarden.Warden, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write is committed before its signals are measured: if measuring fails, the agent
    is told it committed (never invited to retry into a duplicate), and the table's state is
    re-based from the lake at the next refresh."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the change feed could not be read")

    monkeypatch.setattr(seeded.tracker, "_apply_own", broken)
    with seeded.session("a") as s:
        result = s.sql("INSERT INTO orders VALUES (3, NULL)")
    assert result.snapshot_id is not None and result.signals == {}
    monkeypatch.undo()
    seeded.refresh()
    state = seeded.table("orders")
    assert (state.rows, state.snapshot_id) == (3, result.snapshot_id)
    assert {c.name: c.null_count for c in state.columns} == {"id": 0, "email": 2}
