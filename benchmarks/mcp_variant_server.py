"""MCP servers for the MCP benchmark's diagnostics only:

    python -m benchmarks.mcp_variant_server sse|stateless SERVE-ARGS...
    python -m benchmarks.mcp_variant_server floor --port PORT

``sse``: ``lakewarden serve`` answering with SSE streams instead of one JSON body;
``stateless``: ``lakewarden serve`` without MCP sessions (no ``Mcp-Session-Id``, a transport
built for every request). Everything else is the shipped server: one transport option is
passed to the MCP SDK's ``streamable_http_app`` over the shipped ones, from the outside.

``floor``: no lakewarden at all: the MCP SDK's own ``MCPServer`` with one ``query`` tool that
answers a fixed one-row result, served with the shipped transport options (JSON responses,
sessions for 2025-era clients, the SDK's session-manager app dispatched at ``/mcp`` ahead of any
framework, uvicorn), with a ``/healthz`` beside it. What an MCP tool call costs through this SDK
on this machine, whatever the tool does.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from mcp.server import MCPServer
from mcp_types import CallToolResult, TextContent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lakewarden.intake.mcp import streamable_http
from lakewarden.intake.server import mcp_first

VARIANTS = {
    "sse": {"json_response": False},
    "stateless": {"stateless_http": True},
}
# What lakewarden's query tool answers for the benchmark's point query (its shape and size).
FLOOR_ANSWER: dict[str, Any] = {
    "kind": "read",
    "columns": ["id", "ts", "grp0", "amount0", "name0", "flag0", "qty0", "day0", "score0", "code0"],
    "rows": [
        [4242, "2024-01-01T01:10:42", 42, 24.2, "user-4242", True, 194, "2024-08-15", 22.03, "E"]
    ],
    "row_count": 1,
    "truncated": False,
    "rows_affected": None,
    "snapshot_id": None,
    "trace_id": "0" * 32,
    "signals": {},
}


def floor(port: int) -> None:
    server = MCPServer(name="floor", log_level="WARNING")

    @server.tool()
    async def query(sql: str, params: list[Any] | None = None) -> CallToolResult:
        """A fixed answer, whatever the statement."""
        text = json.dumps(FLOOR_ANSWER)
        return CallToolResult(
            content=[TextContent(type="text", text=text)], structured_content=FLOOR_ANSWER
        )

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    rest = Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", healthz)], lifespan=lifespan
    )
    app = mcp_first(rest, streamable_http(server))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", server_header=False)


def main(argv: list[str]) -> int:
    if argv[0] == "floor":
        floor(int(argv[argv.index("--port") + 1]))
        return 0
    options = VARIANTS[argv[0]]
    shipped = MCPServer.streamable_http_app

    def variant(self: MCPServer, **kwargs: Any) -> Any:
        return shipped(self, **{**kwargs, **options})

    MCPServer.streamable_http_app = variant  # type: ignore[method-assign]
    from lakewarden.intake.cli import main as cli

    sys.argv = ["lakewarden", "serve", *argv[1:]]
    cli()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
