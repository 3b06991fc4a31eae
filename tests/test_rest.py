"""The REST API against a real uvicorn server on loopback, with real HTTP calls."""

from __future__ import annotations

import random
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import lakewarden
from lakewarden.client import Client, Unauthenticated
from lakewarden.intake.server import check_bind
from lakewarden.wire import AGENT_HEADER

from server_helpers import Served, serve

ERROR_KEYS = {"code", "message", "violations"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path / "lake") as s:
        yield s


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        client.post("/v1/sql", json={"sql": "CREATE TABLE orders (id BIGINT, email VARCHAR)"})
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "trace_id"}
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    for violation in body["error"]["violations"]:
        assert {"rule", "detail"} <= set(violation)
    assert isinstance(body["trace_id"], str) and len(body["trace_id"]) == 32
    return body


def test_write_read_and_ddl_happy_paths(http: httpx.Client) -> None:
    write = http.post(
        "/v1/sql",
        json={"sql": "INSERT INTO orders VALUES (?, ?), (?, ?)", "params": [1, "a@x", 2, None]},
    )
    assert write.status_code == 200, write.text
    body = write.json()
    assert set(body) >= {
        "kind",
        "columns",
        "rows",
        "row_count",
        "truncated",
        "rows_affected",
        "snapshot_id",
        "trace_id",
        "signals",
    }
    assert (body["kind"], body["rows_affected"]) == ("write", 2)
    assert body["signals"]["orders"]["rows"] == 2
    assert isinstance(body["snapshot_id"], int)

    read = http.post("/v1/sql", json={"sql": "SELECT * FROM orders ORDER BY id"}).json()
    assert read["kind"] == "read"
    assert read["columns"] == ["id", "email"]
    assert read["rows"] == [[1, "a@x"], [2, None]]
    assert (read["row_count"], read["truncated"]) == (2, False)

    capped = http.post("/v1/sql", json={"sql": "SELECT * FROM orders", "max_rows": 1}).json()
    assert (capped["row_count"], capped["truncated"]) == (1, True)

    ddl = http.post("/v1/sql", json={"sql": "ALTER TABLE orders ADD COLUMN note VARCHAR"}).json()
    assert ddl["kind"] == "ddl"
    table = http.get("/v1/tables/orders").json()
    assert [c["name"] for c in table["columns"]] == ["id", "email", "note"]
    assert table["rows"] == 2
    assert [t["table"] for t in http.get("/v1/tables").json()["tables"]] == ["orders"]
    snaps = http.get("/v1/snapshots", params={"table": "orders", "limit": 2}).json()["snapshots"]
    assert len(snaps) == 2
    assert snaps[0]["agent"] == "anonymous"
    assert {"snapshot_id", "time", "agent", "message", "trace_id"} <= set(snaps[0])


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"sql": "SELECT 1; SELECT 2"}, 400, "invalid_sql"),
        ({"sql": ""}, 400, "invalid_sql"),
        ({"sql": "SELEC 1 FROM"}, 400, "invalid_sql"),
        ({"sql": "ATTACH 'other.duckdb' AS other"}, 403, "policy_denied"),
        ({"sql": "COPY orders TO 'out.csv'"}, 403, "policy_denied"),
        ({"sql": "SELECT * FROM no_such_table"}, 422, "execution_failed"),
        ({"query": "SELECT 1"}, 400, "invalid_request"),
        ({"sql": "SELECT 1", "max_rows": 0}, 400, "invalid_request"),
    ],
    ids=[
        "two-statements",
        "empty",
        "syntax",
        "attach",
        "copy",
        "unknown-table",
        "no-sql",
        "zero-max-rows",
    ],
)
def test_errors_have_one_shape(
    http: httpx.Client, body: dict[str, Any], status: int, code: str
) -> None:
    assert_error(http.post("/v1/sql", json=body), status, code)


# Every route, each with the Warden method its work calls made to fail the way a bug would.
BROKEN_ROUTES = [
    pytest.param("POST", "/v1/sql", {"sql": "SELECT 1"}, "pooled_session", id="sql-fast-path"),
    pytest.param("GET", "/v1/tables", None, "tables", id="tables"),
    pytest.param("GET", "/v1/tables/orders", None, "describe", id="table"),
    pytest.param("GET", "/v1/snapshots", None, "snapshots", id="snapshots"),
    pytest.param("POST", "/v1/tables/orders/restore", {"snapshot_id": 1}, "restore", id="restore"),
    pytest.param(
        "POST", "/v1/tables/orders/anomaly/accept", None, "accept_anomaly", id="accept-anomaly"
    ),
    pytest.param("GET", "/v1/audit", None, "audit", id="audit"),
]


@pytest.mark.parametrize(("method", "path", "body", "broken"), BROKEN_ROUTES)
def test_a_server_failure_is_a_structured_500(
    served: Served,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    broken: str,
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug, not the agent's fault")

    monkeypatch.setattr(served.warden, broken, fail)
    with caplog.at_level("ERROR", logger="lakewarden.intake.caller"):
        response = http.request(method, path, json=body)
    answer = assert_error(response, 500, "internal_error")
    assert "a bug" not in response.text  # internals stay in the server's log
    incident = answer["trace_id"]
    assert incident in answer["error"]["message"]
    # ... under the id the caller was given, with the traceback
    (record,) = [r for r in caplog.records if incident in r.getMessage()]
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])
    monkeypatch.undo()
    assert http.post("/v1/sql", json={"sql": "SELECT 1"}).status_code == 200  # still serving


JSON_CASES = yaml.safe_load((Path(__file__).parent / "cases" / "json_values.yaml").read_text())


@pytest.mark.parametrize("case", JSON_CASES, ids=[c["id"] for c in JSON_CASES])
def test_values_read_as_the_documented_json(http: httpx.Client, case: dict[str, Any]) -> None:
    response = http.post("/v1/sql", json={"sql": f"SELECT {case['sql']} AS v"})
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[case["json"]]]


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"", "Input should be an object"),
        (b"{not json", "Invalid JSON"),
        (b'["SELECT 1"]', "Input should be an object"),
        (b'{"sql": 1}', "sql: Input should be a valid string"),
    ],
    ids=["empty", "malformed", "array", "sql-not-string"],
)
def test_a_malformed_body_is_a_structured_400(http: httpx.Client, raw: bytes, detail: str) -> None:
    response = http.post("/v1/sql", content=raw, headers={"Content-Type": "application/json"})
    violations = assert_error(response, 400, "invalid_request")["error"]["violations"]
    assert any(detail in v["detail"] for v in violations), violations


def test_openapi_documents_the_sql_body(http: httpx.Client) -> None:
    operation = http.get("/openapi.json").json()["paths"]["/v1/sql"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"sql", "statements", "params", "max_rows", "dry_run"} <= set(schema["properties"])


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/tables/nope", 404, "not_found"),
        ("/v1/snapshots?table=nope", 404, "not_found"),
        ("/v1/snapshots?limit=0", 400, "invalid_request"),
        ("/v1/no-such-route", 404, "not_found"),
    ],
    ids=["table", "snapshots", "bad-limit", "no-route"],
)
def test_metadata_errors_have_the_one_shape(
    http: httpx.Client, path: str, status: int, code: str
) -> None:
    assert_error(http.get(path), status, code)  # a trace id too, though no statement ran
    trace_id = secrets.token_hex(16)
    traced = http.get(path, headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert assert_error(traced, status, code)["trace_id"] == trace_id


def test_runaway_statement_times_out(tmp_path: Path) -> None:
    settings = lakewarden.Settings(statement_timeout_s=0.5)
    with serve(tmp_path / "lake", settings=settings) as s, httpx.Client(base_url=s.url) as http:
        runaway = (
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
        )
        body = assert_error(http.post("/v1/sql", json={"sql": runaway}, timeout=30), 408, "timeout")
        assert body["error"]["violations"][0]["rule"] == "timeout"
        # the server, and the engine behind it, still answer
        assert http.post("/v1/sql", json={"sql": "SELECT 42"}).json()["rows"] == [[42]]


def test_bearer_token_names_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_urlsafe(16)
    monkeypatch.setenv("LW_TEST_TOKEN_ETL", token)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nagents:\n  etl: {token_env: LW_TEST_TOKEN_ETL, write: ['*'], ddl: true}\n"
    )
    with serve(tmp_path / "lake", policy=policy) as s, httpx.Client(base_url=s.url) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            assert_error(
                http.post("/v1/sql", json={"sql": "SELECT 1"}, headers=headers),
                401,
                "unauthenticated",
            )
        assert http.get("/v1/tables").status_code == 401
        good = {"Authorization": f"Bearer {token}"}
        ok = http.post("/v1/sql", json={"sql": "CREATE TABLE t (i INT)"}, headers=good)
        assert ok.status_code == 200, ok.text
        snaps = http.get("/v1/snapshots", headers=good).json()["snapshots"]
        assert snaps[0]["agent"] == "etl"
        with Client(s.url, token="wrong") as client, pytest.raises(Unauthenticated):
            client.session().sql("SELECT 1")


def test_traceparent_makes_the_statement_a_child_span(served: Served, http: httpx.Client) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    served.spans.clear()
    for sql, status in (("SELECT count(*) FROM orders", 200), ("ATTACH 'x.db'", 403)):
        response = http.post(
            "/v1/sql", json={"sql": sql}, headers={"traceparent": f"00-{trace_id}-{parent}-01"}
        )
        assert response.status_code == status
        assert response.json()["trace_id"] == trace_id
    spans = served.spans.get_finished_spans()
    assert len(spans) == 2
    for span in spans:
        assert span.parent is not None
        assert (f"{span.context.trace_id:032x}", f"{span.parent.span_id:016x}") == (
            trace_id,
            parent,
        )


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{'x' * 32}-{'1' * 16}-01",  # not hex
        f"00-{'0' * 32}-{'1' * 16}-01",  # all-zero trace id
        f"00-{'a' * 32}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{'a' * 32}-{'1' * 16}-01",  # the forbidden version
        f"00-{'A' * 32}-{'1' * 16}-01",  # upper case
        f"00-{'a' * 32}-{'1' * 16}-01-extra",  # version 00 has exactly four fields
    ],
    ids=["not-hex", "zero-trace", "zero-parent", "version-ff", "upper-case", "extra-field"],
)
def test_a_malformed_traceparent_is_not_echoed(http: httpx.Client, traceparent: str) -> None:
    # The statement runs in a trace of its own, and the answer names that trace, not the text;
    # a request refused before any statement ran names a fresh one.
    for body, status in (({"sql": "SELECT 1"}, 200), ({"sql": "SELECT 1", "max_rows": 0}, 400)):
        response = http.post("/v1/sql", json=body, headers={"traceparent": traceparent})
        assert response.status_code == status
        trace_id = response.json()["trace_id"]
        assert trace_id != traceparent.split("-")[1]
        assert len(trace_id) == 32 and int(trace_id, 16)


def test_arrow_stream_for_reads(http: httpx.Client) -> None:
    http.post("/v1/sql", json={"sql": "INSERT INTO orders VALUES (7, 'z')"})
    response = http.post(
        "/v1/sql",
        json={"sql": "SELECT id, email FROM orders"},
        headers={"Accept": "application/vnd.apache.arrow.stream"},
    )
    assert response.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(response.content).read_all()
    assert table.to_pylist() == [{"id": 7, "email": "z"}]
    assert len(response.headers["x-trace-id"]) == 32


def test_client_raises_core_errors(served: Served, http: httpx.Client) -> None:
    with Client(served.url, agent="sdk-user") as client:
        s = client.session()
        assert s.sql("INSERT INTO orders VALUES (1, NULL)").rows_affected == 1
        assert s.sql("SELECT id FROM orders").pl().to_dicts() == [{"id": 1}]
        with pytest.raises(lakewarden.PolicyDenied) as denied:
            s.sql("ATTACH 'x.db'")
        assert denied.value.violations[0].rule
        with pytest.raises(lakewarden.InvalidSQL):
            s.sql("SELECT 1; SELECT 2")
        with pytest.raises(lakewarden.ExecutionError):
            s.sql("SELECT * FROM nope")
    assert served.warden.snapshots(limit=1)[0].agent == "sdk-user"


def _metric_sum(text: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_concurrent_agents_lose_nothing(served: Served, http: httpx.Client) -> None:
    agents, per_agent = 8, 50
    written: list[int] = []
    statuses: list[int] = []
    snapshots: list[int] = []
    lock = threading.Lock()

    def agent(n: int) -> None:
        rng = random.Random(n)
        headers = {AGENT_HEADER: f"agent-{n}"}
        with httpx.Client(base_url=served.url, timeout=120, headers=headers) as client:
            for i in range(per_agent):
                if rng.random() < 0.6:
                    rows = rng.randint(1, 5)
                    values = ", ".join(f"({n * 1000 + i}, 'e{k}')" for k in range(rows))
                    r = client.post("/v1/sql", json={"sql": f"INSERT INTO orders VALUES {values}"})
                    count = r.json().get("rows_affected") or 0 if r.status_code == 200 else 0
                    if r.status_code == 200:
                        with lock:
                            snapshots.append(r.json()["snapshot_id"])
                else:
                    r = client.post("/v1/sql", json={"sql": "SELECT count(*) FROM orders"})
                    count = 0
                with lock:
                    statuses.append(r.status_code)
                    written.append(count)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(statuses) == agents * per_agent
    assert set(statuses) == {200}
    total = http.post("/v1/sql", json={"sql": "SELECT count(*) FROM orders"}).json()["rows"][0][0]
    assert total == sum(written) > 0
    assert _metric_sum(http.get("/metrics").text, "lakewarden_rows_written_total") == total
    # one snapshot per write, each naming its agent, and their rows add up to the table
    assert len(set(snapshots)) == len(snapshots) and None not in snapshots
    listed = http.get("/v1/snapshots", params={"table": "orders", "limit": 10_000}).json()
    by_agents = [s for s in listed["snapshots"] if (s["agent"] or "").startswith("agent-")]
    assert sorted(s["snapshot_id"] for s in by_agents) == sorted(snapshots)
    assert sum(s["rows_added"] for s in by_agents) == total


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"], ids=["any", "lan"])
def test_open_mode_refuses_non_loopback(served: Served, host: str) -> None:
    with pytest.raises(lakewarden.ConfigurationError, match="loopback"):
        check_bind(served.warden, host)


def test_health_metrics_and_openapi(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").json() == {"ready": True}
    assert _metric_sum(http.get("/metrics").text, "lakewarden_statements_total") >= 1
    paths = http.get("/openapi.json").json()["paths"]
    documented = {
        (method.upper(), path): sorted(p["name"] for p in operation.get("parameters", []))
        for path, methods in paths.items()
        for method, operation in methods.items()
    }
    # In open mode (this server) every operation takes the agent header.
    assert documented == {
        ("POST", "/v1/sql"): [AGENT_HEADER],
        ("GET", "/v1/tables"): [AGENT_HEADER],
        ("GET", "/v1/tables/{name}"): [AGENT_HEADER, "name"],
        ("GET", "/v1/snapshots"): [AGENT_HEADER, "limit", "table"],
        ("POST", "/v1/tables/{name}/restore"): [AGENT_HEADER, "name"],
        ("POST", "/v1/tables/{name}/anomaly/accept"): [AGENT_HEADER, "name"],
        ("GET", "/v1/audit"): [AGENT_HEADER, "agent", "limit"],
    }
    restore = paths["/v1/tables/{name}/restore"]["post"]
    assert "requestBody" in restore


def test_the_readme_names_the_agent_header() -> None:
    # The header is a contract with every agent in open mode: renaming it is a documented act.
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"`{AGENT_HEADER}`" in readme


@pytest.mark.parametrize(
    "body",
    [{"query": "SELECT 1"}, {"sql": "SELECT 1", "statements": ["SELECT 2"]}],
    ids=["neither-sql-nor-statements", "both"],
)
def test_request_details_read_as_sentences(http: httpx.Client, body: dict[str, Any]) -> None:
    violations = assert_error(http.post("/v1/sql", json=body), 400, "invalid_request")["error"][
        "violations"
    ]
    for v in violations:
        assert not v["detail"].startswith((":", " ")), v
        assert "Value error," not in v["detail"], v
