"""MCP intake: an ``MCPServer`` whose tools are thin adapters over one Warden.

Tools: ``query`` (reads), ``execute`` (writes and DDL), ``list_tables``, ``describe_table``,
``list_snapshots``. Over streamable HTTP the caller is the agent named by the request's bearer
token (or ``X-Lakewarden-Agent`` in open mode); over stdio it is the agent the server was started
for. ``params._meta.traceparent`` (or the HTTP ``traceparent`` header) makes the statement span a
child of the agent's trace. Errors are tool errors (``is_error``) whose text is the same
``{"error": {"code", "message", "violations"}}`` JSON the REST API answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any, TypeVar

import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp_types import CallToolResult, TextContent
from pydantic import ValidationError

from lakewarden import __version__
from lakewarden.core.warden import Warden
from lakewarden.errors import InvalidRequest, LakewardenError, Violation
from lakewarden.intake.jsonvalues import json_value, result_json
from lakewarden.intake.rest import (
    ANONYMOUS,
    AgentHeader,
    check_params,
    default_max_rows,
    error_body,
    identify,
    request_violations,
    sql_request,
)

__all__ = ["build_mcp"]

T = TypeVar("T")
MAX_LISTED = 10_000  # the REST listing's bound on ``limit``


def _ok(payload: Any) -> CallToolResult:
    data = json_value(payload)
    content = TextContent(type="text", text=json.dumps(data))
    return CallToolResult(content=[content], structured_content=data)


def _error(error: LakewardenError) -> CallToolResult:
    body = error_body(error, getattr(error, "trace_id", None))
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(body))],
        structured_content=body,
        is_error=True,
    )


def _headers(ctx: Context) -> Mapping[str, str] | None:
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    return headers if isinstance(headers, Mapping) else None


# The tool that runs what the other one refuses: the session's wrong-kind refusal names kinds,
# an agent needs the tool to call instead.
_OTHER_TOOL = {"query": "execute", "execute": "query"}
_RUNS = {"query": "read statements (SELECT)", "execute": "writes and DDL"}


def _other_tool(error: InvalidRequest, tool: str) -> InvalidRequest:
    """The session's ``wrong_tool`` refusal, worded for an MCP agent: what to call instead."""
    reworded = InvalidRequest(
        f"{tool} runs {_RUNS[tool]} only: call {_OTHER_TOOL[tool]} for this one",
        error.violations,
    )
    reworded.trace_id = error.trace_id
    return reworded


class _Server(MCPServer):
    """Arguments that do not fit a tool's declared types (a string for ``max_rows``) are
    refused by the SDK before the tool runs, in its own words; here they get the REST error
    shape and code (``invalid_request``), like every other refusal."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(exc, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            return _error(
                InvalidRequest(
                    "the tool arguments are not valid", request_violations(cause.errors())
                )
            )


def build_mcp(
    warden: Warden, *, stdio_agent: str | None = None, workers: Executor | None = None
) -> MCPServer:
    """The MCP server of ``warden``; ``stdio_agent`` names the caller when there is no HTTP.
    Tools run their blocking work on ``workers`` when given (the HTTP server's threads, which
    all exist from the start), else on anyio's worker threads."""
    server = _Server(
        name="lakewarden",
        version=__version__,
        # INFO would log every HTTP request over the demo's live view and the server's output.
        log_level="WARNING",
        instructions=(
            "Governed SQL on a DuckLake lake. One statement per call. Use `query` for SELECT, "
            "`execute` for INSERT/UPDATE/DELETE/DDL; refusals come back as errors with violations."
        ),
    )

    def agent_of(ctx: Context) -> str:
        headers = _headers(ctx)
        if headers is None:
            # stdio: whoever started the process chose the identity with --agent
            return stdio_agent or ANONYMOUS
        return identify(warden, headers.get("authorization"), headers.get(AgentHeader))

    def traceparent_of(ctx: Context) -> str | None:
        meta = ctx.request_context.meta
        value = meta.get("traceparent") if isinstance(meta, Mapping) else None
        if value is None and meta is not None:
            value = getattr(meta, "traceparent", None)
        if value is None:
            headers = _headers(ctx)
            value = headers.get("traceparent") if headers is not None else None
        return str(value) if value else None

    async def call(ctx: Context, work: Callable[[str], T]) -> T:
        agent = agent_of(ctx)
        if workers is not None:
            return await asyncio.get_running_loop().run_in_executor(workers, work, agent)
        return await anyio.to_thread.run_sync(work, agent)

    async def statement(
        ctx: Context,
        sql: str,
        params: list[Any] | None,
        max_rows: int | None,
        reads: bool,
        dry_run: bool = False,
    ) -> CallToolResult:
        try:
            # The REST body's rules, applied to the tool's arguments (max_rows > 0, a string
            # statement, the parameter count), with the REST error shape.
            checked = sql_request(
                {"sql": sql, "params": params, "max_rows": max_rows, "dry_run": dry_run}
            )
            check_params(checked, warden.settings.max_params)
            traceparent = traceparent_of(ctx)

            def run(agent: str) -> dict[str, Any]:
                cap = max_rows
                if cap is None and warden.row_limit(agent, None) is None:
                    cap = default_max_rows(warden)
                with warden.pooled_session(agent) as s:
                    try:
                        result = s.sql(
                            sql,
                            params,
                            max_rows=cap,
                            traceparent=traceparent,
                            dry_run=dry_run,
                            expect="read" if reads else "write",
                        )
                    except InvalidRequest as exc:
                        if any(v.rule == "wrong_tool" for v in exc.violations):
                            raise _other_tool(exc, "query" if reads else "execute") from exc
                        raise
                    return result_json(result)

            return _ok(await call(ctx, run))
        except LakewardenError as exc:
            return _error(exc)

    @server.tool()
    async def query(
        sql: str, ctx: Context, params: list[Any] | None = None, max_rows: int | None = None
    ) -> CallToolResult:
        """Run one read-only SQL statement (SELECT) on the lake; returns columns and rows."""
        return await statement(ctx, sql, params, max_rows, reads=True)

    @server.tool()
    async def execute(
        sql: str | list[str],
        ctx: Context,
        params: list[Any] | None = None,
        dry_run: bool = False,
    ) -> CallToolResult:
        """Run one write or DDL statement, or a list of them as ONE atomic, gated transaction;
        returns rows_affected, snapshot_id and signals. dry_run judges and rolls back."""
        if isinstance(sql, list):
            try:
                sql_request({"statements": sql, "params": params, "dry_run": dry_run})
                traceparent = traceparent_of(ctx)

                def run_batch(agent: str) -> dict[str, Any]:
                    with warden.pooled_session(agent) as s:
                        return result_json(s.batch(sql, traceparent=traceparent, dry_run=dry_run))

                return _ok(await call(ctx, run_batch))
            except LakewardenError as exc:
                return _error(exc)
        return await statement(ctx, sql, params, None, reads=False, dry_run=dry_run)

    @server.tool()
    async def restore_table(name: str, snapshot_id: int, ctx: Context) -> CallToolResult:
        """Restore a table to its content at an earlier snapshot, as one new commit
        (only agents the policy allows to restore)."""
        try:
            if snapshot_id < 0:
                raise InvalidRequest(
                    "the tool arguments are not valid",
                    [Violation("invalid_request", "snapshot_id: must be >= 0")],
                )
            traceparent = traceparent_of(ctx)
            result = await call(
                ctx,
                lambda agent: warden.restore(
                    name, snapshot_id, agent=agent, traceparent=traceparent
                ),
            )
            return _ok(result_json(result))
        except LakewardenError as exc:
            return _error(exc)

    @server.tool()
    async def list_tables(ctx: Context) -> CallToolResult:
        """List the lake's tables with rows, freshness, null ratios and schema changes."""
        try:
            states = await call(ctx, warden.tables)
            return _ok({"tables": [t.summary() for t in states]})
        except LakewardenError as exc:
            return _error(exc)

    @server.tool()
    async def describe_table(name: str, ctx: Context) -> CallToolResult:
        """Describe one table: columns with types and null ratios, last writer, freshness."""
        try:
            return _ok(await call(ctx, lambda agent: warden.describe(name, agent)))
        except LakewardenError as exc:
            return _error(exc)

    @server.tool()
    async def list_snapshots(
        ctx: Context, table: str | None = None, limit: int = 20
    ) -> CallToolResult:
        """List snapshots newest first: id, time, agent, message and trace id of each commit."""
        try:
            if not 0 < limit <= MAX_LISTED:
                raise InvalidRequest(
                    "the tool arguments are not valid",
                    [Violation("invalid_request", f"limit: must be in 1..{MAX_LISTED}")],
                )
            snaps = await call(ctx, lambda agent: warden.snapshots(table, limit, agent))
            return _ok({"snapshots": [s.to_dict() for s in snaps]})
        except LakewardenError as exc:
            return _error(exc)

    return server
