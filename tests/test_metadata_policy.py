"""Metadata under the read grants, MCP arguments under the REST rules, readiness that asks the
engine, and the SDK's own limits (one deadline, result bytes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

import lakewarden

from server_helpers import Served, free_port, serve

TOKENS = {"analyst": "analyst-secret-token-1", "admin": "admin-secret-token-1"}
POLICY = """\
version: 1
agents:
  analyst: {token_env: LW_META_ANALYST, read: ["public_*"], write: ["public_*"]}
  admin: {token_env: LW_META_ADMIN, read: ["*"], write: ["*"], ddl: true}
restore: [admin]
"""


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("meta")
    (root / "policy.yaml").write_text(POLICY)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LW_META_ANALYST", TOKENS["analyst"])
        env.setenv("LW_META_ADMIN", TOKENS["admin"])
        with serve(root / "lake", policy=root / "policy.yaml") as served:
            for agent, sql in [
                ("admin", "CREATE TABLE public_orders (id BIGINT, note VARCHAR)"),
                ("admin", "CREATE TABLE secret_salaries (name VARCHAR, salary BIGINT)"),
                ("admin", "INSERT INTO secret_salaries VALUES ('ceo', 1000000)"),
                ("analyst", "INSERT INTO public_orders VALUES (1, 'a')"),
                ("analyst", "SELECT * FROM secret_salaries"),  # refused, and audited
            ]:
                httpx.post(f"{served.url}/v1/sql", json={"sql": sql}, headers=auth(agent))
            yield served


def auth(agent: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[agent]}"}


def get(served: Served, caller: str, path: str, **params: Any) -> httpx.Response:
    url = httpx.URL(f"{served.url}{path}")
    return httpx.get(url.copy_merge_params(params), headers=auth(caller), timeout=30)


def test_table_listing_follows_the_read_grants(lake: Served) -> None:
    analyst = [t["table"] for t in get(lake, "analyst", "/v1/tables").json()["tables"]]
    admin = [t["table"] for t in get(lake, "admin", "/v1/tables").json()["tables"]]
    assert analyst == ["public_orders"]
    assert admin == ["public_orders", "secret_salaries"]


@pytest.mark.parametrize(
    "path",
    ["/v1/tables/{name}", "/v1/snapshots?table={name}"],
    ids=["describe", "snapshots-of"],
)
def test_a_table_it_may_not_read_is_not_found_like_a_missing_one(lake: Served, path: str) -> None:
    hidden = get(lake, "analyst", path.format(name="secret_salaries"))
    missing = get(lake, "analyst", path.format(name="no_such_table"))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["code"] == "not_found"
    # the same words, the name aside: no existence oracle
    assert hidden.json()["error"]["message"].replace("secret_salaries", "X") == missing.json()[
        "error"
    ]["message"].replace("no_such_table", "X")
    assert get(lake, "admin", path.format(name="secret_salaries")).status_code == 200


def test_snapshots_show_only_commits_of_readable_tables(lake: Served) -> None:
    analyst = get(lake, "analyst", "/v1/snapshots", limit=100).json()["snapshots"]
    admin = get(lake, "admin", "/v1/snapshots", limit=100).json()["snapshots"]
    assert "secret_salaries" not in json.dumps(analyst)
    assert any("secret_salaries" in json.dumps(s) for s in admin)
    assert {s["snapshot_id"] for s in analyst} < {s["snapshot_id"] for s in admin}
    assert any("public_orders" in (s["message"] or "") for s in analyst)


@pytest.mark.parametrize(
    ("agent", "query", "status", "agents_seen"),
    [
        pytest.param("analyst", {}, 200, {"analyst"}, id="own-records"),
        pytest.param("analyst", {"agent": "analyst"}, 200, {"analyst"}, id="own-by-name"),
        pytest.param("analyst", {"agent": "admin"}, 403, None, id="other-agent"),
        pytest.param("admin", {}, 200, {"analyst", "admin"}, id="admin-all"),
        pytest.param("admin", {"agent": "analyst"}, 200, {"analyst"}, id="admin-filter"),
    ],
)
def test_audit_shows_an_agent_its_own_records(
    lake: Served,
    agent: str,
    query: dict[str, str],
    status: int,
    agents_seen: set[str] | None,
) -> None:
    response = get(lake, agent, "/v1/audit", **query)
    assert response.status_code == status, response.text
    if agents_seen is None:
        assert response.json()["error"]["code"] == "policy_denied"
        return
    assert {r["agent"] for r in response.json()["records"]} == agents_seen


def mcp_call(served: Served, agent: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    async def main() -> None:
        http = create_mcp_http_client(headers=auth(agent))
        async with (
            http,
            Client(streamable_http_client(f"{served.url}/mcp/", http_client=http)) as client,
        ):
            result = await client.call_tool(tool, args)
            text = result.content[0].text  # type: ignore[union-attr]
            out.update(json.loads(text), is_error=result.is_error)

    anyio.run(main)
    return out


@pytest.mark.parametrize(
    ("tool", "args", "secret_visible"),
    [
        pytest.param("list_tables", {}, False, id="list-tables"),
        pytest.param("list_snapshots", {"limit": 100}, False, id="list-snapshots"),
    ],
)
def test_mcp_listings_follow_the_read_grants(
    lake: Served, tool: str, args: dict[str, Any], secret_visible: bool
) -> None:
    assert ("secret_salaries" in json.dumps(mcp_call(lake, "analyst", tool, args))) is (
        secret_visible
    )
    assert "secret_salaries" in json.dumps(mcp_call(lake, "admin", tool, args))


def test_mcp_describe_of_a_hidden_table_is_not_found(lake: Served) -> None:
    hidden = mcp_call(lake, "analyst", "describe_table", {"name": "secret_salaries"})
    assert hidden["is_error"] and hidden["error"]["code"] == "not_found"
    assert not mcp_call(lake, "admin", "describe_table", {"name": "secret_salaries"})["is_error"]


# The REST body's rules, applied to MCP tool arguments: (tool, arguments, error code, rule).
MCP_ARGUMENTS = [
    pytest.param("query", {"sql": "SELECT 1", "max_rows": -5}, "invalid_request", id="neg-rows"),
    pytest.param("query", {"sql": "SELECT 1", "max_rows": 0}, "invalid_request", id="zero-rows"),
    pytest.param(
        "query", {"sql": "SELECT 1", "max_rows": "many"}, "invalid_request", id="rows-not-int"
    ),
    pytest.param("query", {"sql": 5}, "invalid_request", id="sql-not-string"),
    pytest.param("query", {"sql": "SELECT 1", "params": "x"}, "invalid_request", id="params-str"),
    pytest.param(
        "query",
        {"sql": "SELECT ?", "params": [1] * 10_001},
        "too_large",
        id="too-many-params",
    ),
    pytest.param(
        "execute",
        {"sql": "INSERT INTO public_orders VALUES (?, 'p')", "params": [1] * 10_001},
        "too_large",
        id="too-many-params-execute",
    ),
    pytest.param("execute", {"sql": []}, "invalid_request", id="empty-batch"),
    pytest.param(
        "restore_table",
        {"name": "public_orders", "snapshot_id": -1},
        "invalid_request",
        id="negative-snapshot",
    ),
    pytest.param("list_snapshots", {"limit": 0}, "invalid_request", id="zero-limit"),
    pytest.param("list_snapshots", {"limit": 10_001}, "invalid_request", id="huge-limit"),
]


@pytest.mark.parametrize(("tool", "args", "code"), MCP_ARGUMENTS)
def test_mcp_arguments_are_checked_like_rest_bodies(
    lake: Served, tool: str, args: dict[str, Any], code: str
) -> None:
    answer = mcp_call(lake, "admin", tool, args)
    assert answer["is_error"], answer
    assert set(answer["error"]) == {"code", "message", "violations"}
    assert answer["error"]["code"] == code


# -- readiness ---------------------------------------------------------------------------------

# A server whose engine is broken from inside, the way a statement broke it in the field: DuckDB
# logging switched to a folder the hardened engine may not write, after which every statement
# fails. Agents' SQL cannot do that any more, so the fault is injected on the engine itself.
BRICKABLE_SERVER = textwrap.dedent(
    """
    import sys, lakewarden
    from lakewarden.intake.server import ServerThread
    warden = lakewarden.open(sys.argv[1], telemetry=lakewarden.Telemetry(env={}))
    server = ServerThread(warden, port=int(sys.argv[2])).start()
    print("ready", flush=True)
    sys.stdin.readline()
    cur = warden.engine.cursor()
    try:
        cur.execute("CALL enable_logging(storage => 'file', storage_path => '/proc/nowhere')")
    except Exception:
        pass
    print("broken", flush=True)
    sys.stdin.readline()
    """
)


def test_readyz_fails_when_the_engine_cannot_run_a_statement(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", BRICKABLE_SERVER, str(tmp_path / "lake"), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OTEL_SDK_DISABLED": "true"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert httpx.get(f"{url}/readyz").json() == {"ready": True}
        proc.stdin.write("break\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "broken"
        started = time.monotonic()
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert time.monotonic() - started < 5
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        assert ready.json()["reason"].startswith("engine: ")
        # liveness is the process, readiness is the engine: only readiness fails
        assert httpx.get(f"{url}/healthz").status_code == 200
        statement = httpx.post(f"{url}/v1/sql", json={"sql": "SELECT 1"}, timeout=10)
        assert statement.status_code != 200  # what /readyz said is what agents would get
    finally:
        proc.kill()
        proc.wait(30)


# -- the SDK's own limits ------------------------------------------------------------------------


def test_sdk_timeout_while_fetching_is_a_timeout(lake_dir: Path) -> None:
    settings = lakewarden.Settings(statement_timeout_s=1)
    with (
        lakewarden.open(lake_dir, settings=settings, telemetry=lakewarden.Telemetry(env={})) as w,
        w.session("sdk") as s,
    ):
        started = time.monotonic()
        with pytest.raises(lakewarden.StatementTimeout) as info:
            s.sql("SELECT range FROM range(100000000000) WHERE range % 50000000000 = 0")
        assert time.monotonic() - started < 3
        assert info.value.violations[0].limit == 1
        assert s.sql("SELECT 42").rows == [(42,)]


@pytest.mark.parametrize(
    ("max_rows", "outcome"),
    [
        pytest.param(None, "too_large", id="no-row-cap"),
        pytest.param(100, "truncated", id="rows-cap-first"),
    ],
)
def test_sdk_result_bytes_are_capped(lake_dir: Path, max_rows: int | None, outcome: str) -> None:
    settings = lakewarden.Settings(max_result_bytes=1_000_000)
    with (
        lakewarden.open(lake_dir, settings=settings, telemetry=lakewarden.Telemetry(env={})) as w,
        w.session("sdk") as s,
    ):
        sql = "SELECT repeat('x', 1000) AS v FROM range(10000)"  # about 10 MB
        if outcome == "too_large":
            with pytest.raises(lakewarden.TooLarge) as info:
                s.sql(sql, max_rows=max_rows)
            (violation,) = info.value.violations
            assert (violation.rule, violation.limit) == ("result_size", 1_000_000)
        else:
            result = s.sql(sql, max_rows=max_rows)
            assert (result.row_count, result.truncated) == (100, True)
        assert s.sql("SELECT 42").rows == [(42,)]  # the half-read result was finished


def test_an_atomic_batch_spends_one_time_budget(lake_dir: Path) -> None:
    work = "INSERT INTO t SELECT count(*) FROM range(20000000) r WHERE r.range % 7 = 1"
    with (
        lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as w,
        w.session("a") as s,
    ):
        s.sql("CREATE TABLE t (n BIGINT)")
        took = []
        for _ in range(3):
            started = time.monotonic()
            s.sql(work)
            took.append(time.monotonic() - started)
    one = sorted(took)[1]
    # Each statement fits its limit 2.5 times over; six of them do not fit one budget.
    settings = lakewarden.Settings(statement_timeout_s=round(2.5 * one, 3))
    with (
        lakewarden.open(lake_dir, settings=settings, telemetry=lakewarden.Telemetry(env={})) as w,
        w.session("a") as s,
    ):
        with pytest.raises(lakewarden.StatementTimeout):
            s.batch([work] * 6)
        assert s.sql("SELECT count(*) FROM t").rows == [(3,)]  # the batch committed nothing
