"""MCP intake: lakewarden's tools on an ``MCPServer``, thin adapters over one Warden.

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
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.context import ServerRequestContext
from mcp_types import CallToolRequestParams, CallToolResult, InputRequiredResult, TextContent
from mcp_types import Tool as ListedTool
from pydantic import BaseModel, ConfigDict, Field, ValidationError
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
    cancel_of,
    identify,
    request_violations,
    valid_traceparent,
)
from lakewarden.intake.jsonvalues import json_value
from lakewarden.intake.statements import request_from_arguments, run_statement, statement_json
from lakewarden.result import Result

__all__ = ["build_mcp", "statement", "streamable_http"]

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


# -- each tool's arguments: its listed input schema, and what a call is checked against ----------


class _Arguments(BaseModel):
    # Names a tool does not take are ignored, as the SDK's own tools ignore them.
    model_config = ConfigDict(extra="ignore")


class QueryArguments(_Arguments):
    model_config = ConfigDict(title="queryArguments")
    sql: str
    params: list[Any] | None = None
    max_rows: int | None = None


class ExecuteArguments(_Arguments):
    model_config = ConfigDict(title="executeArguments")
    sql: str | list[str]
    params: list[Any] | None = None
    dry_run: bool = False


class RestoreArguments(_Arguments):
    model_config = ConfigDict(title="restore_tableArguments")
    name: str
    snapshot_id: Annotated[int, Field(ge=0)]


class NoArguments(_Arguments):
    model_config = ConfigDict(title="list_tablesArguments")


class DescribeArguments(_Arguments):
    model_config = ConfigDict(title="describe_tableArguments")
    name: str


class SnapshotsArguments(_Arguments):
    model_config = ConfigDict(title="list_snapshotsArguments")
    table: str | None = None
    limit: Annotated[int, Field(gt=0, le=MAX_LISTED)] = 20


def _checked(model: type[_Arguments], given: Mapping[str, Any]) -> Any:
    """``given`` as ``model``, or :class:`InvalidRequest` in the REST error shape.

    As the SDK does for its own tools, a JSON text given where a list or object is expected
    (some clients send ``"[1, 2]"`` for a list) is read as that list or object first.
    """
    values = dict(given)
    for name, field in model.model_fields.items():
        value = values.get(name)
        if isinstance(value, str) and field.annotation is not str:
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError):
                continue
            if isinstance(parsed, list | dict):
                values[name] = parsed
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InvalidRequest(
            "the tool arguments are not valid", request_violations(exc.errors())
        ) from exc


@dataclass(frozen=True, slots=True)
class _Tool:
    """One tool: what it is listed as, and its work, run on a worker thread with the call's
    arguments checked against ``arguments`` (a Result or JSON-able data)."""

    description: str
    arguments: type[_Arguments]
    work: Callable[[Any, Caller], Any]

    def listed(self, name: str) -> ListedTool:
        schema = self.arguments.model_json_schema(by_alias=True)
        return ListedTool(name=name, description=self.description, input_schema=schema)


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


def _headers(ctx: ServerRequestContext[Any, Any]) -> Mapping[str, str] | None:
    headers = getattr(ctx.request, "headers", None)
    return headers if isinstance(headers, Mapping) else None


def _traceparent(
    ctx: ServerRequestContext[Any, Any], headers: Mapping[str, str] | None
) -> str | None:
    """``params._meta.traceparent``, else the HTTP header: the first well-formed one."""
    meta = ctx.meta or {}
    given = valid_traceparent(meta.get("traceparent"))
    if given is None and headers is not None:
        given = valid_traceparent(headers.get("traceparent"))
    return given


Call = Callable[
    [ServerRequestContext[Any, Any], str, _Tool, Mapping[str, Any]], Awaitable[CallToolResult]
]


class _Server(MCPServer):
    """lakewarden's tools, called straight from the SDK's ``tools/call`` handler.

    The SDK's tool layer (a ``Context`` per call, its tool manager, argument validation against
    a model derived from a function signature, then the function) sat between the request and
    lakewarden's own checks, which every statement needs anyway (the REST body's rules): on the
    event loop, before and after the statement, it cost 0.15-0.19 ms of a ``query`` call on the
    server and 0.2-0.27 ms at the client (``python -m benchmarks.mcp_probe``, a server with this
    direct call against one with the SDK's path, interleaved; three runs). Here each tool is an
    argument model (its listed schema) and a piece of work; a call is checked once, on the
    worker thread that runs it, and answered in the REST error shape whatever fails. The SDK's
    tool manager stays empty, so the SDK finds no ``Mcp-Param-*`` headers to check (no tool
    declares one) and walks no schema per call. Tools registered the SDK's way still work.
    """

    def __init__(self, tools: Mapping[str, _Tool], call: Call, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lakewarden_tools = dict(tools)
        self._listed = [tool.listed(name) for name, tool in tools.items()]
        self._call = call

    async def list_tools(self) -> list[ListedTool]:
        return [*self._listed, *await super().list_tools()]

    async def _handle_call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        tool = self._lakewarden_tools.get(params.name)
        if tool is None:  # not one of lakewarden's: the SDK's answer (an unknown tool)
            return await super()._handle_call_tool(ctx, params)
        return await self._call(ctx, params.name, tool, params.arguments or {})


def _caller(warden: Warden, stdio_agent: str | None, workers: Executor | None) -> Call:
    """``call(ctx, name, tool, arguments)``: the one way a tool answers. The arguments are
    checked and the work done on ``workers`` (see :func:`~lakewarden.intake.caller.attend`),
    and the result rendered there as the tool result."""

    async def call(
        ctx: ServerRequestContext[Any, Any], name: str, tool: _Tool, given: Mapping[str, Any]
    ) -> CallToolResult:
        where = f"MCP tool {name}"
        try:
            headers = _headers(ctx)
            traceparent = _traceparent(ctx, headers)
        except Exception as exc:
            return _error(Failure.unexpected(where, exc))

        def who() -> str:
            if headers is None:
                # stdio: whoever started the process chose the identity with --agent
                return stdio_agent or ANONYMOUS
            return identify(warden, headers)

        def work(caller: Caller) -> CallToolResult:
            return _ok(tool.work(_checked(tool.arguments, given), caller), caller)

        scope = getattr(ctx.request, "scope", None)
        outcome = await attend(who, traceparent, work, workers, where, cancel_of(scope))
        return _error(outcome) if isinstance(outcome, Failure) else outcome

    return call


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

    def run_statement_tool(tool: str) -> Callable[[Any, Caller], Result]:
        def work(args: QueryArguments | ExecuteArguments, caller: Caller) -> Result:
            fields = args.model_dump()
            if isinstance(fields["sql"], list):
                fields["statements"] = fields.pop("sql")
            return statement(warden, tool, fields)(caller)

        return work

    tools = {
        "query": _Tool(
            "Run one read-only SQL statement (SELECT) on the lake; returns columns and rows.",
            QueryArguments,
            run_statement_tool("query"),
        ),
        "execute": _Tool(
            "Run one write or DDL statement, or a list of them as ONE atomic, gated "
            "transaction; returns rows_affected, snapshot_id and signals. dry_run judges and "
            "rolls back.",
            ExecuteArguments,
            run_statement_tool("execute"),
        ),
        "restore_table": _Tool(
            "Restore a table to its content at an earlier snapshot, as one new commit (only "
            "agents the policy allows to restore).",
            RestoreArguments,
            lambda a, c: warden.restore(
                a.name, a.snapshot_id, agent=c.agent, traceparent=c.traceparent
            ),
        ),
        "list_tables": _Tool(
            "List the lake's tables with rows, freshness, null ratios and schema changes.",
            NoArguments,
            lambda a, c: {"tables": [t.summary() for t in warden.tables(c.agent)]},
        ),
        "describe_table": _Tool(
            "Describe one table: columns with types and null ratios, last writer, freshness.",
            DescribeArguments,
            lambda a, c: warden.describe(a.name, c.agent),
        ),
        "list_snapshots": _Tool(
            "List snapshots newest first: id, time, agent, message and trace id of each commit.",
            SnapshotsArguments,
            lambda a, c: {
                "snapshots": [s.to_dict() for s in warden.snapshots(a.table, a.limit, c.agent)]
            },
        ),
    }
    # INFO would log every HTTP request over the demo's live view and the server's output.
    server = _Server(
        tools,
        _caller(warden, stdio_agent, workers),
        name="lakewarden",
        version=__version__,
        log_level="WARNING",
        instructions=INSTRUCTIONS,
    )
    # The SDK opens a span per MCP request on OpenTelemetry's global tracer provider, which
    # lakewarden never sets (its spans go through its own provider, one per statement, joined
    # to the caller's params._meta.traceparent): a span that records nothing, for 0.07-0.1 ms
    # of every call (python -m benchmarks.mcp_probe). The rest of the chain stays.
    server.middleware[:] = [
        m for m in server.middleware if not isinstance(m, OpenTelemetryMiddleware)
    ]
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
