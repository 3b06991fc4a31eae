"""MCP intake: an ``MCPServer`` whose tools are thin adapters over one Warden.

Tools: ``query`` (reads), ``execute`` (writes and DDL), ``list_tables``, ``describe_table``,
``list_snapshots``, ``restore_table``. Over streamable HTTP the caller is the agent named by the
request's bearer token (or the agent header in open mode, see :mod:`lakewarden.intake.caller`);
over stdio it is the agent the server was started for. ``params._meta.traceparent`` (or the
HTTP ``traceparent`` header) makes the statement span a child of the agent's trace. Errors are
tool errors (``is_error``) whose text is the same ``{"error": {"code", "message", "violations"}}``
JSON the REST API answers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.shared.inbound import find_invalid_x_mcp_header, x_mcp_header_map
from mcp_types import CallToolResult, TextContent
from pydantic import Field, ValidationError
from starlette.types import ASGIApp

from lakewarden import __version__
from lakewarden.core.warden import Warden
from lakewarden.errors import InvalidRequest
from lakewarden.intake.caller import (
    ANONYMOUS,
    MAX_LISTED,
    Caller,
    Failure,
    attend,
    identify,
    request_violations,
    trace_id_of,
    valid_traceparent,
)
from lakewarden.intake.jsonvalues import json_value
from lakewarden.intake.statements import request_from_arguments, run_statement, statement_json
from lakewarden.result import Result

__all__ = ["answerer", "build_mcp", "statement", "streamable_http"]

INSTRUCTIONS = (
    "Governed SQL on a DuckLake lake. One statement per call. Use `query` for SELECT, "
    "`execute` for INSERT/UPDATE/DELETE/DDL; refusals come back as errors with violations."
)

# What each statement tool runs; the session refuses the other kind (rule ``wrong_tool``).
_EXPECT = {"query": "read", "execute": "write"}
# The session's refusal names statement kinds; an agent needs the tool to call instead.
_INSTEAD = {
    "query": "query runs read statements (SELECT) only: call execute for this one",
    "execute": "execute runs writes and DDL only: call query for this one",
}


def _ok(value: Any, caller: Caller) -> CallToolResult:
    # A statement's answer is JSON-safe as built (REST sends it as it is); only other data
    # (table descriptions, listings) goes through json_value, which would walk a result's
    # rows a second time (0.02 ms for the benchmark's one-row, ten-column read).
    if isinstance(value, Result):
        data = statement_json(value, caller.traceparent)
    else:
        data = json_value(value)
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data))], structured_content=data
    )


def _error(failure: Failure) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(failure.body))],
        structured_content=failure.body,
        is_error=True,
    )


def _headers(ctx: Context) -> Mapping[str, str] | None:
    headers = getattr(ctx.request_context.request, "headers", None)
    return headers if isinstance(headers, Mapping) else None


def _traceparent(ctx: Context, headers: Mapping[str, str] | None) -> str | None:
    """``params._meta.traceparent``, else the HTTP header: the first well-formed one."""
    meta = ctx.request_context.meta or {}
    given = valid_traceparent(meta.get("traceparent"))
    if given is None and headers is not None:
        given = valid_traceparent(headers.get("traceparent"))
    return given


class _Server(MCPServer):
    """Every failure as a tool error in the REST error shape and code.

    Arguments that do not fit a tool's declared types (a string for ``max_rows``) are refused
    by the SDK before the tool runs, in its own words; here they are ``invalid_request``. A
    crash outside a tool's work (which :func:`~lakewarden.intake.caller.attend` already
    catches) is an ``internal_error`` with an id in the log, like any other.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_schemas: dict[str, dict[str, Any] | None] = {}

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        """The schema the SDK checks a call's ``Mcp-Param-*`` headers against (2026-07-28
        protocol), or None when there is nothing to check, as the SDK's hook allows.

        Only properties annotated ``x-mcp-header`` are checked, and no lakewarden tool has
        one; the SDK would still walk the tool's schema twice on every call to find that out
        (0.05-0.07 ms per call, ``python -m benchmarks.mcp_probe``), so it is found out once
        per tool. Unknown names are not remembered: a client chooses them.
        """
        if name in self._header_schemas:
            return self._header_schemas[name]
        schema = super()._tool_input_schema(name)
        if schema is None:
            return None
        annotated = find_invalid_x_mcp_header(schema) is None and bool(x_mcp_header_map(schema))
        self._header_schemas[name] = schema if annotated else None
        return self._header_schemas[name]

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError as exc:
            return _error(Failure.unexpected(f"MCP tool {name}", exc))
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            error = InvalidRequest(
                "the tool arguments are not valid", request_violations(exc.__cause__.errors())
            )
            traceparent = None if context is None else _traceparent(context, _headers(context))
            return _error(Failure.of(error, trace_id_of(traceparent)))


Work = Callable[[Caller], Any]
Answer = Callable[[Context, str, Work], Awaitable[CallToolResult]]


def answerer(warden: Warden, stdio_agent: str | None, workers: Executor | None) -> Answer:
    """``answer(ctx, tool, work)``: the one way a tool answers.

    ``work(caller)`` runs on ``workers`` (see :func:`~lakewarden.intake.caller.attend`) and
    returns a statement's :class:`Result` or JSON-able data, rendered there as the tool result.
    """

    async def answer(ctx: Context, tool: str, work: Work) -> CallToolResult:
        headers = _headers(ctx)

        def who() -> str:
            if headers is None:
                # stdio: whoever started the process chose the identity with --agent
                return stdio_agent or ANONYMOUS
            return identify(warden, headers)

        outcome = await attend(
            who,
            _traceparent(ctx, headers),
            lambda caller: _ok(work(caller), caller),
            workers,
            f"MCP tool {tool}",
        )
        return _error(outcome) if isinstance(outcome, Failure) else outcome

    return answer


def statement(warden: Warden, tool: str, fields: dict[str, Any]) -> Callable[[Caller], Result]:
    """The work of a statement tool: ``fields`` checked by the REST body's rules (and refused
    in the REST error shape), then run, refused by the session if it is of the other kind."""

    def run(caller: Caller) -> Result:
        request = request_from_arguments(fields, warden.settings.max_params)
        try:
            return run_statement(
                warden, caller.agent, request, caller.traceparent, expect=_EXPECT[tool]
            )
        except InvalidRequest as exc:
            if not any(v.rule == "wrong_tool" for v in exc.violations):
                raise
            instead = InvalidRequest(_INSTEAD[tool], exc.violations)
            instead.trace_id = exc.trace_id
            raise instead from exc

    return run


def build_mcp(
    warden: Warden, *, stdio_agent: str | None = None, workers: Executor | None = None
) -> MCPServer:
    """The MCP server of ``warden``; ``stdio_agent`` names the caller when there is no HTTP.
    Tools run their blocking work on ``workers`` when given (the HTTP server's threads, which
    all exist from the start), else on anyio's worker threads."""
    # INFO would log every HTTP request over the demo's live view and the server's output.
    server = _Server(
        name="lakewarden", version=__version__, log_level="WARNING", instructions=INSTRUCTIONS
    )
    # The SDK opens a span per MCP request on OpenTelemetry's global tracer provider, which
    # lakewarden never sets (its spans go through its own provider, one per statement, joined
    # to the caller's params._meta.traceparent): a span that records nothing, for 0.07-0.1 ms
    # of every call (python -m benchmarks.mcp_probe). The rest of the chain stays.
    server.middleware[:] = [
        m for m in server.middleware if not isinstance(m, OpenTelemetryMiddleware)
    ]
    answer = answerer(warden, stdio_agent, workers)

    @server.tool()
    async def query(
        sql: str, ctx: Context, params: list[Any] | None = None, max_rows: int | None = None
    ) -> CallToolResult:
        """Run one read-only SQL statement (SELECT) on the lake; returns columns and rows."""
        fields = {"sql": sql, "params": params, "max_rows": max_rows}
        return await answer(ctx, "query", statement(warden, "query", fields))

    @server.tool()
    async def execute(
        sql: str | list[str],
        ctx: Context,
        params: list[Any] | None = None,
        dry_run: bool = False,
    ) -> CallToolResult:
        """Run one write or DDL statement, or a list of them as ONE atomic, gated transaction;
        returns rows_affected, snapshot_id and signals. dry_run judges and rolls back."""
        key = "statements" if isinstance(sql, list) else "sql"
        fields = {key: sql, "params": params, "dry_run": dry_run}
        return await answer(ctx, "execute", statement(warden, "execute", fields))

    @server.tool()
    async def restore_table(
        name: str, snapshot_id: Annotated[int, Field(ge=0)], ctx: Context
    ) -> CallToolResult:
        """Restore a table to its content at an earlier snapshot, as one new commit
        (only agents the policy allows to restore)."""
        return await answer(
            ctx,
            "restore_table",
            lambda c: warden.restore(name, snapshot_id, agent=c.agent, traceparent=c.traceparent),
        )

    @server.tool()
    async def list_tables(ctx: Context) -> CallToolResult:
        """List the lake's tables with rows, freshness, null ratios and schema changes."""
        return await answer(
            ctx, "list_tables", lambda c: {"tables": [t.summary() for t in warden.tables(c.agent)]}
        )

    @server.tool()
    async def describe_table(name: str, ctx: Context) -> CallToolResult:
        """Describe one table: columns with types and null ratios, last writer, freshness."""
        return await answer(ctx, "describe_table", lambda c: warden.describe(name, c.agent))

    @server.tool()
    async def list_snapshots(
        ctx: Context,
        table: str | None = None,
        limit: Annotated[int, Field(gt=0, le=MAX_LISTED)] = 20,
    ) -> CallToolResult:
        """List snapshots newest first: id, time, agent, message and trace id of each commit."""
        return await answer(
            ctx,
            "list_snapshots",
            lambda c: {"snapshots": [s.to_dict() for s in warden.snapshots(table, limit, c.agent)]},
        )

    return server


def streamable_http(server: MCPServer) -> ASGIApp:
    """The streamable-HTTP endpoint of ``server``, as a bare ASGI app (serve it inside
    ``server.session_manager.run()``; any path reaches it, so mount it where it belongs).

    Every answer is one JSON body (``json_response``), never an SSE stream: the tools are
    request/response and send no notifications, every client accepts JSON (it must list
    ``application/json`` in its Accept header), and the stream costs the SDK a task group and
    memory streams per request (measured: 0.4 ms per call on the per-request 2026-07-28
    protocol, 1.4 ms on a 2025-06-18 session; ``python -m benchmarks.mcp_probe``).
    Sessions stay on (``stateless_http=False``): a 2025-era client then reuses its session's
    server task, where stateless mode builds a transport, a task and a dispatcher for every
    request (0.25 ms slower per call, same probe); 2026-07-28 calls carry no session either way.
    """
    server.streamable_http_app(streamable_http_path="/", json_response=True)
    return server.session_manager.handle_request
