"""MCP tools through a real MCP client: streamable HTTP on the running server, and stdio."""

from __future__ import annotations

import json
import logging
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

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


def test_streamable_http_open_mode_with_traceparent(tmp_path: Path) -> None:
    with serve(tmp_path / "lake") as served:
        headers = {AGENT_HEADER: "mcp-agent"}

        async def main() -> None:
            http = create_mcp_http_client(headers=headers)
            async with (
                http,
                Client(streamable_http_client(f"{served.url}/mcp/", http_client=http)) as client,
            ):
                await exercise(client, "mcp-agent")
                # The wrong-tool refusal is the session's: traced like every refused statement.
                refused = {
                    (s.name, (s.attributes or {}).get("error.type"))
                    for s in served.spans.get_finished_spans()
                }
                assert ("DELETE orders", "invalid_request") in refused
                trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
                served.spans.clear()
                result = ok(
                    await client.call_tool(
                        "query",
                        {"sql": "SELECT count(*) FROM orders"},
                        meta={"traceparent": f"00-{trace_id}-{parent}-01"},  # type: ignore[arg-type]
                    )
                )
                assert result["trace_id"] == trace_id
                (span,) = served.spans.get_finished_spans()
                assert span.parent is not None
                assert f"{span.parent.span_id:016x}" == parent

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
    ("token", "allowed"),
    [("good", True), ("bad", False), (None, False)],
    ids=["valid-token", "wrong-token", "no-token"],
)
def test_streamable_http_identity_from_bearer_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str | None, allowed: bool
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
            http = create_mcp_http_client(headers=headers)
            async with (
                http,
                Client(streamable_http_client(f"{served.url}/mcp/", http_client=http)) as client,
            ):
                await exercise(client, "mcp-etl")

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
