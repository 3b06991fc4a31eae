"""MCP tools through a real MCP client: streamable HTTP on the running server, and stdio."""

from __future__ import annotations

import json
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server import MCPServer
from mcp.server._otel import OpenTelemetryMiddleware
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import HEADER_MISMATCH
from pydantic import Field

import lakewarden
import lakewarden.intake.server as server_module
from lakewarden.intake.mcp import build_mcp
from lakewarden.wire import AGENT_HEADER

from server_helpers import serve

TOOLS = {"query", "execute", "list_tables", "describe_table", "list_snapshots"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"},
    },
}


# How an mcp.Client connects: "auto" negotiates the per-request 2026-07-28 protocol with this
# SDK (no initialize, no session); "legacy" the initialize handshake and a session, as most
# clients in the field still do. The server answers both on the same endpoint.
MODES = [
    pytest.param("auto", "2026-07-28", id="2026-07-28-per-request"),
    pytest.param("legacy", "2025-11-25", id="2025-11-25-session"),
]


@asynccontextmanager
async def mcp_client(
    url: str,
    mode: str = "auto",
    headers: dict[str, str] | None = None,
    seen: list[httpx.Response] | None = None,
    path: str = "/mcp/",
) -> AsyncIterator[Client]:
    """A real ``mcp.Client`` over streamable HTTP; ``seen`` collects every HTTP response."""
    http = create_mcp_http_client(headers=headers or {})

    async def record(response: httpx.Response) -> None:
        if seen is not None:
            seen.append(response)

    http.event_hooks = {"response": [record]}
    transport = streamable_http_client(f"{url}{path}", http_client=http)
    async with http, Client(transport, mode=mode) as client:
        yield client


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with anyio.fail_after(120):  # a hung transport fails the test instead of the whole run
            await main()

    anyio.run(bounded)


def ok(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    data = result.structured_content
    assert isinstance(data, dict)
    return data


def tool_error(result: Any) -> dict[str, Any]:
    assert result.is_error
    body = json.loads(result.content[0].text)
    assert set(body) == {"error", "trace_id"}
    assert set(body["error"]) == {"code", "message", "violations"}
    assert isinstance(body["trace_id"], str) and len(body["trace_id"]) == 32, body
    return dict(body["error"])


async def exercise(client: Client, agent: str) -> None:
    """Call every tool once the way an agent would, and check what comes back."""
    assert {t.name for t in (await client.list_tools()).tools} >= TOOLS
    created = ok(
        await client.call_tool("execute", {"sql": "CREATE TABLE orders (id BIGINT, email VARCHAR)"})
    )
    assert created["kind"] == "ddl"
    written = ok(
        await client.call_tool(
            "execute", {"sql": "INSERT INTO orders VALUES (?, ?), (2, NULL)", "params": [1, "a"]}
        )
    )
    assert written["rows_affected"] == 2
    read = ok(await client.call_tool("query", {"sql": "SELECT * FROM orders ORDER BY id"}))
    assert (read["columns"], read["rows"]) == (["id", "email"], [[1, "a"], [2, None]])
    tables = ok(await client.call_tool("list_tables", {}))
    assert [t["table"] for t in tables["tables"]] == ["orders"]
    described = ok(await client.call_tool("describe_table", {"name": "orders"}))
    assert described["rows"] == 2
    snaps = ok(await client.call_tool("list_snapshots", {"table": "orders", "limit": 5}))
    assert {s["agent"] for s in snaps["snapshots"]} == {agent}

    assert tool_error(await client.call_tool("execute", {"sql": "ATTACH 'x.db'"}))["code"] == (
        "policy_denied"
    )
    assert tool_error(await client.call_tool("query", {"sql": "SELECT 1; SELECT 2"}))["code"] == (
        "invalid_sql"
    )
    assert tool_error(await client.call_tool("describe_table", {"name": "nope"}))["code"] == (
        "not_found"
    )
    assert tool_error(await client.call_tool("list_snapshots", {"limit": 0}))["code"] == (
        "invalid_request"
    )
    for tool, sql, other in (
        ("query", "DELETE FROM orders", "execute"),
        ("execute", "SELECT * FROM orders", "query"),
    ):
        wrong = tool_error(await client.call_tool(tool, {"sql": sql}))
        assert wrong["code"] == "invalid_request"
        assert wrong["violations"][0]["rule"] == "wrong_tool"
        assert f"call {other}" in wrong["message"]  # the agent learns which tool to use
    count = ok(await client.call_tool("query", {"sql": "SELECT count(*) FROM orders"}))
    assert count["rows"] == [[2]]  # the DELETE sent to query ran nowhere


@pytest.mark.parametrize(("mode", "version"), MODES)
def test_streamable_http_open_mode_answers_json(tmp_path: Path, mode: str, version: str) -> None:
    """Every tool and every refusal through a real client, in either protocol era; every POST
    is answered with one JSON body, never an SSE stream, and only the handshake era keeps a
    session."""
    seen: list[httpx.Response] = []
    with serve(tmp_path / "lake") as served:

        async def main() -> None:
            async with mcp_client(served.url, mode, {AGENT_HEADER: "mcp-agent"}, seen) as client:
                assert client.protocol_version == version
                await exercise(client, "mcp-agent")
                # The wrong-tool refusal is the session's: traced like every refused statement.
                refused = {
                    (s.name, (s.attributes or {}).get("error.type"))
                    for s in served.spans.get_finished_spans()
                }
                assert ("DELETE orders", "invalid_request") in refused

        run(main)
    answers = [r for r in seen if r.request.method == "POST" and r.status_code != 202]
    assert len(answers) >= 14, [r.request.content[:80] for r in seen]  # every call exercise makes
    types = {r.headers.get("content-type", "").split(";")[0] for r in answers}
    assert types == {"application/json"}, types
    sessions = {r.headers.get("mcp-session-id") for r in answers}
    if mode == "legacy":
        assert len(sessions) == 1 and None not in sessions, sessions  # one session, kept
    else:
        assert sessions == {None}, sessions


@pytest.mark.parametrize(("mode", "version"), MODES)
@pytest.mark.parametrize("carrier", ["params._meta", "http-header"])
def test_streamable_http_traceparent(tmp_path: Path, mode: str, version: str, carrier: str) -> None:
    """The agent's trace continues in the statement span, from the call's ``_meta`` or from
    the request's ``traceparent`` header, and the answer names it."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{parent}-01"
    headers = {AGENT_HEADER: "mcp-agent"}
    meta = None
    if carrier == "params._meta":
        meta = {"traceparent": traceparent}
    else:
        headers["traceparent"] = traceparent
    with serve(tmp_path / "lake") as served:

        async def main() -> None:
            async with mcp_client(served.url, mode, headers) as client:
                assert client.protocol_version == version
                ok(await client.call_tool("execute", {"sql": "CREATE TABLE t (i INT)"}))
                served.spans.clear()
                result = ok(
                    await client.call_tool(
                        "query",
                        {"sql": "SELECT count(*) FROM t"},
                        meta=meta,  # type: ignore[arg-type]
                    )
                )
                assert result["trace_id"] == trace_id
                (span,) = served.spans.get_finished_spans()
                assert span.name == "SELECT t"
                assert span.parent is not None
                assert f"{span.parent.span_id:016x}" == parent
                assert f"{span.context.trace_id:032x}" == trace_id
                # a refusal carries the caller's trace too
                refused = tool_error(
                    await client.call_tool("query", {"sql": "SELECT 1; SELECT 2"}, meta=meta)  # type: ignore[arg-type]
                )
                assert refused["code"] == "invalid_sql"

        run(main)


@pytest.mark.parametrize(("mode", "version"), MODES)
@pytest.mark.parametrize("path", ["/mcp/", "/mcp"], ids=["mcp-slash", "mcp-no-slash"])
def test_the_endpoint_answers_at_mcp_with_or_without_slash(
    tmp_path: Path, mode: str, version: str, path: str
) -> None:
    with serve(tmp_path / "lake") as served:

        async def main() -> None:
            async with mcp_client(served.url, mode, {AGENT_HEADER: "a"}, path=path) as client:
                assert client.protocol_version == version
                assert ok(await client.call_tool("query", {"sql": "SELECT 42"}))["rows"] == [[42]]

        run(main)
        # below /mcp/ there is nothing: the REST API's own 404, in its error shape
        response = httpx.post(f"{served.url}/mcp/elsewhere", json=INITIALIZE, headers=MCP_HEADERS)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_a_failure_of_the_transport_is_a_500_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MCP endpoint is served ahead of FastAPI; a crash there still answers in the error
    shape (and the server keeps serving)."""
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    shipped = StreamableHTTPSessionManager._handle_request
    broken = {"on": True}

    async def crash(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if broken["on"]:
            raise RuntimeError("a bug in the transport")
        await shipped(self, scope, receive, send)

    monkeypatch.setattr(StreamableHTTPSessionManager, "_handle_request", crash)
    with serve(tmp_path / "lake") as served:
        response = httpx.post(f"{served.url}/mcp/", json=INITIALIZE, headers=MCP_HEADERS)
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert "a bug" not in response.text
        broken["on"] = False

        async def main() -> None:
            async with mcp_client(served.url, "auto", {AGENT_HEADER: "a"}) as client:
                ok(await client.call_tool("query", {"sql": "SELECT 1"}))

        run(main)


def test_no_sdk_span_per_request(tmp_path: Path) -> None:
    """lakewarden's spans are its own (one per statement); the SDK's span per request would
    go to OpenTelemetry's global provider, which lakewarden never sets."""
    with lakewarden.open(tmp_path / "lake", telemetry=lakewarden.Telemetry(env={})) as warden:
        middleware = build_mcp(warden).middleware
    assert middleware, "the rest of the SDK's chain stays"
    assert not any(isinstance(m, OpenTelemetryMiddleware) for m in middleware)


def _with_region_tool(build: Callable[..., MCPServer]) -> Callable[..., MCPServer]:
    """lakewarden's MCP server plus a tool whose ``region`` argument is mirrored in an
    ``Mcp-Param-Region`` header (no lakewarden tool declares one)."""

    def built(*args: Any, **kwargs: Any) -> MCPServer:
        server = build(*args, **kwargs)

        @server.tool()
        def region(
            region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
        ) -> str:
            """Echo the region."""
            return region

        return server

    return built


def test_mcp_param_headers_are_checked_only_where_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK checks ``Mcp-Param-*`` headers against a tool's ``x-mcp-header`` properties;
    lakewarden's tools declare none, so there is nothing to check (and nothing is walked per
    call), while a tool that declares one is still checked."""
    monkeypatch.setattr(server_module, "build_mcp", _with_region_tool(server_module.build_mcp))
    sent: list[httpx.Request] = []
    with serve(tmp_path / "lake") as served:

        async def main() -> None:
            http = create_mcp_http_client(headers={AGENT_HEADER: "a"})

            async def record(request: httpx.Request) -> None:
                sent.append(request)

            http.event_hooks = {"request": [record]}
            transport = streamable_http_client(f"{served.url}/mcp/", http_client=http)
            async with http, Client(transport) as client:
                assert client.protocol_version == "2026-07-28"
                region = await client.call_tool("region", {"region": "eu-west"})
                assert not region.is_error and region.content[0].text == "eu-west"  # type: ignore[union-attr]
                ok(await client.call_tool("query", {"sql": "SELECT 1"}))

        run(main)
        calls = {
            json.loads(r.content)["params"]["name"]: r for r in sent if b"tools/call" in r.content
        }
        assert calls["region"].headers["mcp-param-region"] == "eu-west"  # the client mirrors it
        assert not any(k.startswith("mcp-param-") for k in calls["query"].headers)

        def replay(request: httpx.Request, **extra: str) -> httpx.Response:
            headers = {k: v for k, v in request.headers.items() if k not in ("content-length",)}
            return httpx.post(
                str(request.url), content=request.content, headers={**headers, **extra}
            )

        refused = replay(calls["region"], **{"mcp-param-region": "us-east"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == HEADER_MISMATCH
        # nothing declared on query: a stray header is not the SDK's to judge
        answered = replay(calls["query"], **{"mcp-param-sql": "SELECT 2"})
        assert answered.status_code == 200, answered.text
        assert answered.json()["result"]["structuredContent"]["rows"] == [[1]]


# (tool, arguments, the answer's rows or the refusal's code and the violation that names it)
ARGUMENT_CASES = [
    pytest.param("query", {"sql": "SELECT ?", "params": [7]}, [[7]], id="params-list"),
    pytest.param("query", {"sql": "SELECT ?", "params": "[7]"}, [[7]], id="params-as-json-text"),
    pytest.param("query", {"sql": "SELECT 1", "colour": "red"}, [[1]], id="unknown-name-ignored"),
    pytest.param("query", {"sql": "SELECT 1", "max_rows": "1"}, [[1]], id="number-as-text"),
    pytest.param("query", {}, ("invalid_request", "sql: Field required"), id="sql-missing"),
    pytest.param(
        "query",
        {"sql": "SELECT 1", "max_rows": "many"},
        ("invalid_request", "max_rows: Input should be a valid integer"),
        id="max-rows-not-a-number",
    ),
    pytest.param(
        "query",
        {"sql": "SELECT 1", "max_rows": 0},
        ("invalid_request", "max_rows: Input should be greater than 0"),
        id="max-rows-zero-rest-rule",
    ),
    pytest.param(
        "execute",
        {"sql": ["SELECT 1"], "params": [1]},
        ("invalid_request", "'params' goes with 'sql'"),
        id="batch-with-params-rest-rule",
    ),
    pytest.param(
        "restore_table",
        {"name": "t", "snapshot_id": -1},
        ("invalid_request", "snapshot_id: Input should be greater than or equal to 0"),
        id="negative-snapshot",
    ),
    pytest.param(
        "describe_table",
        {"name": 5},
        ("invalid_request", "name: Input should be a valid string"),
        id="name-not-text",
    ),
]


@pytest.mark.parametrize(("tool", "arguments", "expected"), ARGUMENT_CASES)
def test_tool_arguments_checked_once_in_the_rest_shape(
    tmp_path: Path, tool: str, arguments: dict[str, Any], expected: Any
) -> None:
    with serve(tmp_path / "lake") as served:

        async def main() -> None:
            async with mcp_client(served.url, "auto", {AGENT_HEADER: "a"}) as client:
                result = await client.call_tool(tool, arguments)
                if isinstance(expected, list):
                    assert ok(result)["rows"] == expected
                    return
                code, detail = expected
                error = tool_error(result)
                assert error["code"] == code, error
                assert any(detail in v["detail"] for v in error["violations"]), error

        run(main)


def test_an_unknown_tool_is_a_tool_error(tmp_path: Path) -> None:
    with serve(tmp_path / "lake") as served:

        async def main() -> None:
            async with mcp_client(served.url, "auto", {AGENT_HEADER: "a"}) as client:
                result = await client.call_tool("drop_everything", {})
                assert result.is_error
                assert "drop_everything" in result.content[0].text  # type: ignore[union-attr]

        run(main)


# Every tool, with the Warden method its work calls; None: the failure is outside the tool's
# work, in the intake itself (finding the call's traceparent).
BROKEN_TOOLS = [
    ("query", {"sql": "SELECT 1"}, "pooled_session"),
    ("execute", {"sql": "CREATE TABLE t (i INT)"}, "pooled_session"),
    ("execute", {"sql": ["CREATE TABLE t (i INT)"]}, "pooled_session"),
    ("list_tables", {}, "tables"),
    ("describe_table", {"name": "orders"}, "describe"),
    ("list_snapshots", {}, "snapshots"),
    ("restore_table", {"name": "orders", "snapshot_id": 1}, "restore"),
    ("list_tables", {}, None),
]


def test_a_server_failure_is_an_internal_error_tool_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug, not the agent's fault")

    with serve(tmp_path / "lake") as served:

        async def main() -> None:
            http = create_mcp_http_client(headers={AGENT_HEADER: "mcp-agent"})
            async with (
                http,
                Client(streamable_http_client(f"{served.url}/mcp/", http_client=http)) as client,
            ):
                for tool, args, broken in BROKEN_TOOLS:
                    with monkeypatch.context() as patch:
                        if broken is None:
                            patch.setattr("lakewarden.intake.mcp._traceparent", fail)
                        else:
                            patch.setattr(served.warden, broken, fail)
                        caplog.clear()
                        result = await client.call_tool(tool, args)
                    error = tool_error(result)
                    assert error["code"] == "internal_error", (tool, error)
                    assert "a bug" not in result.content[0].text  # type: ignore[union-attr]
                    # the id the agent was given finds the traceback in the server's log
                    incident = json.loads(result.content[0].text)["trace_id"]  # type: ignore[union-attr]
                    assert incident in error["message"]
                    (record,) = [r for r in caplog.records if incident in r.getMessage()]
                    assert record.exc_info is not None, tool
                    assert "a bug" in "".join(logging.Formatter().formatException(record.exc_info))
                ok(await client.call_tool("query", {"sql": "SELECT 1"}))  # still serving

        with caplog.at_level("ERROR", logger="lakewarden.intake.caller"):
            run(main)


@pytest.mark.parametrize(
    ("token", "allowed", "mode"),
    [
        ("good", True, "auto"),
        ("good", True, "legacy"),
        ("bad", False, None),
        (None, False, None),
    ],
    ids=["valid-token-2026-07-28", "valid-token-2025-11-25", "wrong-token", "no-token"],
)
def test_streamable_http_identity_from_bearer_token(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
    allowed: bool,
    mode: str | None,
) -> None:
    secret = secrets.token_urlsafe(16)
    monkeypatch.setenv("LW_TEST_TOKEN_MCP", secret)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nagents:\n  mcp-etl: {token_env: LW_TEST_TOKEN_MCP, write: ['*'], ddl: true}\n"
    )
    sent = {"good": secret, "bad": "not-the-token"}.get(token or "")
    headers = {"Authorization": f"Bearer {sent}"} if sent else {}
    with serve(tmp_path / "lake", policy=policy) as served:
        if not allowed:
            # No session and no tool list without the token: the transport is never reached.
            for message in (INITIALIZE, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}):
                response = httpx.post(
                    f"{served.url}/mcp/", json=message, headers={**headers, **MCP_HEADERS}
                )
                assert response.status_code == 401, response.text
                assert response.json()["error"]["code"] == "unauthenticated"
                assert "mcp-session-id" not in response.headers
            return

        async def main() -> None:
            assert mode is not None
            async with mcp_client(served.url, mode, headers) as client:
                await exercise(client, "mcp-etl")
                # the agent header names nobody once the policy has tokens
                forged = {**headers, AGENT_HEADER: "someone-else"}
                async with mcp_client(served.url, mode, forged) as other:
                    snaps = ok(await other.call_tool("list_snapshots", {"table": "orders"}))
                    assert {s["agent"] for s in snaps["snapshots"]} == {"mcp-etl"}
                    ok(
                        await other.call_tool(
                            "execute", {"sql": "INSERT INTO orders VALUES (3, 'c')"}
                        )
                    )
                    snaps = ok(await other.call_tool("list_snapshots", {"limit": 1}))
                    assert snaps["snapshots"][0]["agent"] == "mcp-etl"

        run(main)


def test_stdio_server_for_one_agent(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "lakewarden.intake.cli",
            "mcp",
            "--lake",
            str(tmp_path / "lake"),
            "--agent",
            "stdio-agent",
        ],
        env={"OTEL_SDK_DISABLED": "true", "PATH": "/usr/bin:/bin"},
    )

    async def main() -> None:
        async with Client(params) as client:
            await exercise(client, "stdio-agent")

    run(main)
