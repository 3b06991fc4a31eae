"""REST intake: FastAPI routes over one :class:`~lakewarden.core.warden.Warden` (DESIGN.md, REST).

Every route is a thin adapter: identify the caller, hand the statement to a core ``Session`` and
map the outcome to JSON. Statements run on a pool of worker threads, each on a session lent by
the warden's per-agent pool (a session is one DuckDB cursor), so many agents are served at once.
``POST /v1/sql``, the path of every agent statement, is dispatched ahead of FastAPI's stack.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Annotated, Any, TypeVar

import pyarrow as pa
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from lakewarden.core.warden import Warden
from lakewarden.errors import (
    InvalidRequest,
    LakewardenError,
    TooLarge,
    Unauthenticated,
    Violation,
)
from lakewarden.intake.jsonvalues import json_value, result_json
from lakewarden.result import Result
from lakewarden.settings import Settings

__all__ = [
    "ARROW_STREAM",
    "DEFAULT_MAX_ROWS",
    "STATUS",
    "AgentHeader",
    "build_router",
    "error_body",
    "fast_path",
    "identify",
    "install_error_handlers",
    "sql_endpoint",
]

log = logging.getLogger(__name__)

# Rows a read returns when neither the request nor the agent's policy sets a cap: an unbounded
# SELECT must not exhaust the sidecar's memory. Override with LAKEWARDEN_MAX_ROWS (a setting,
# validated at start-up with the others).
DEFAULT_MAX_ROWS = Settings.max_rows
ARROW_STREAM = "application/vnd.apache.arrow.stream"
AgentHeader = "X-Lakewarden-Agent"
ANONYMOUS = "anonymous"

STATUS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_sql": 400,
    "unauthenticated": 401,
    "policy_denied": 403,
    "not_found": 404,
    "timeout": 408,
    "quality_gate_failed": 409,
    "too_large": 413,
    "execution_failed": 422,
}


def default_max_rows(warden: Warden) -> int:
    return warden.settings.max_rows


class SqlRequest(BaseModel):
    """One statement (``sql``), or an atomic batch (``statements``): exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    sql: str | None = None
    statements: Annotated[list[str], Field(min_length=1)] | None = None
    params: list[Any] | None = None
    max_rows: Annotated[int, Field(gt=0)] | None = None
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> SqlRequest:
        if (self.sql is None) == (self.statements is None):
            raise ValueError("give either 'sql' (one statement) or 'statements' (a batch)")
        if self.statements is not None and self.params is not None:
            raise ValueError("'params' goes with 'sql'; a batch takes literal statements")
        return self


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    snapshot_id: Annotated[int, Field(ge=0)]


def request_violations(errors: Any) -> list[Violation]:
    out = []
    for e in errors:
        where = ".".join(map(str, e["loc"]))
        # pydantic prefixes a model validator's own message with "Value error, "
        msg = str(e["msg"]).removeprefix("Value error, ")
        out.append(Violation("invalid_request", f"{where}: {msg}" if where else msg))
    return out


def parse_sql_request(raw: bytes) -> SqlRequest:
    """The body of ``POST /v1/sql``, validated straight from its bytes.

    Done here rather than by a FastAPI body parameter: pydantic-core parses and validates JSON
    bytes in one pass, while FastAPI's body handling costs about 0.2 ms more per request, which
    every agent statement would pay.
    """
    try:
        return SqlRequest.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise InvalidRequest(
            "the request body is not valid", request_violations(exc.errors())
        ) from exc


def sql_request(fields: dict[str, Any]) -> SqlRequest:
    """The same request from already-decoded values (the MCP tools' arguments): one set of
    rules, one error shape, whichever door a statement came through."""
    try:
        return SqlRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(
            "the tool arguments are not valid", request_violations(exc.errors())
        ) from exc


def check_params(request: SqlRequest, limit: int) -> None:
    """Refuse more bound parameters than ``limit`` before any of them reaches the engine."""
    count = len(request.params or ())
    if count > limit:
        raise TooLarge(
            f"{count} bound parameters is more than the limit of {limit}",
            [Violation("params", "bound parameters limit", measured=count, limit=limit)],
        )


_SQL_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SqlRequest.model_json_schema()}},
    }
}


def error_body(error: LakewardenError, trace_id: str | None) -> dict[str, Any]:
    return {"error": json_value(error.to_dict()), "trace_id": trace_id}


def internal_error_response(scope: Scope) -> JSONResponse:
    """A 500 in the one error shape, with an id that finds the failure in the server's log
    (uvicorn logs the traceback itself once the exception is re-raised, and then closes the
    connection, so the answer says so and no client reuses it)."""
    trace_id = secrets.token_hex(16)
    log.error("internal error %s on %s %s", trace_id, scope.get("method"), scope.get("path"))
    message = f"the server failed on this request; its log names the failure {trace_id}"
    body = {
        "error": {"code": "internal_error", "message": message, "violations": []},
        "trace_id": trace_id,
    }
    return JSONResponse(body, status_code=500, headers={"Connection": "close"})


def error_response(error: LakewardenError, trace_id: str | None) -> JSONResponse:
    return JSONResponse(error_body(error, trace_id), status_code=STATUS.get(error.code, 500))


def identify(warden: Warden, authorization: str | None, agent_header: str | None) -> str:
    """The calling agent: from the bearer token when the policy has tokens, else the header."""
    if not warden.policy.requires_tokens:
        return agent_header or ANONYMOUS
    scheme, _, token = (authorization or "").partition(" ")
    agent = warden.policy.agent_for_token(token.strip()) if scheme.lower() == "bearer" else None
    if agent is None:
        raise Unauthenticated(
            "a valid 'Authorization: Bearer <token>' header is required",
            [Violation("unauthenticated", "missing or unknown bearer token")],
        )
    return agent


def traceparent_of(request: Request) -> str | None:
    """The caller's W3C traceparent when it sent a well-formed one; else the core starts a
    trace of its own for the statement."""
    given = request.headers.get("traceparent", "").strip()
    parts = given.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        return given
    return None


def trace_id_of(traceparent: str | None) -> str:
    """The trace id of a response the core gave none (a request refused before analysis):
    the caller's trace, or a fresh id, so every response carries one the caller can quote."""
    return traceparent.split("-")[1] if traceparent else secrets.token_hex(16)


def _arrow_stream(result: Result) -> bytes:
    table = result.arrow()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


SqlEndpoint = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


def sql_endpoint(warden: Warden, workers: Executor) -> SqlEndpoint:
    """``POST /v1/sql``: every agent statement comes through here (see :func:`fast_path`).

    Statements run on ``workers``, a plain thread pool: handing a job to it and back costs
    about 0.12 ms less than Starlette's ``run_in_threadpool`` (anyio) on these machines. The
    statement needs nothing from the request's context: its trace comes from the traceparent.
    """

    def run_statement(agent: str, body: SqlRequest, traceparent: str | None) -> Result:
        max_rows = body.max_rows
        if max_rows is None and warden.row_limit(agent, None) is None:
            max_rows = default_max_rows(warden)
        with warden.pooled_session(agent) as s:
            if body.statements is not None:
                return s.batch(body.statements, traceparent=traceparent, dry_run=body.dry_run)
            assert body.sql is not None
            return s.sql(
                body.sql,
                body.params,
                max_rows=max_rows,
                traceparent=traceparent,
                dry_run=body.dry_run,
            )

    def answer(agent: str, body: SqlRequest, traceparent: str | None, arrow: bool) -> Response:
        # Rendered on the worker thread, right after the statement: the event loop only sends
        # the bytes, so one request costs one hand-off each way.
        result = run_statement(agent, body, traceparent)
        trace_id = result.trace_id or trace_id_of(traceparent)
        if arrow and result.kind == "read":
            return Response(
                _arrow_stream(result),
                media_type=ARROW_STREAM,
                headers={
                    "X-Trace-Id": trace_id,
                    "X-Lakewarden-Truncated": str(result.truncated).lower(),
                },
            )
        payload = result_json(result)
        payload["trace_id"] = trace_id
        return JSONResponse(payload)

    async def sql(request: Request) -> Response:
        """Run one governed statement; reads answer Arrow IPC when the Accept header asks."""
        traceparent = traceparent_of(request)
        try:
            agent = identify(
                warden, request.headers.get("authorization"), request.headers.get(AgentHeader)
            )
            body = parse_sql_request(await request.body())
            check_params(body, warden.settings.max_params)
            arrow = ARROW_STREAM in request.headers.get("accept", "")
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(workers, answer, agent, body, traceparent, arrow)
        except LakewardenError as exc:
            return error_response(exc, getattr(exc, "trace_id", None) or trace_id_of(traceparent))

    return sql


def fast_path(app: ASGIApp, endpoint: SqlEndpoint) -> ASGIApp:
    """``app`` with ``POST /v1/sql`` dispatched before the framework.

    FastAPI's middleware, routing and dependency handling cost about 0.3 ms per request here,
    and every agent statement would pay it. The route stays declared on the app (OpenAPI);
    both doors call the same endpoint.
    """

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/sql" and scope["method"] == "POST":
            try:
                response = await endpoint(Request(scope, receive))
            except Exception:
                await internal_error_response(scope)(scope, receive, send)
                raise
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    return dispatch


def build_router(warden: Warden, sql: SqlEndpoint, workers: Executor) -> APIRouter:
    """The ``/v1`` routes; their blocking work runs on ``workers``, threads that exist from the
    start (see :func:`lakewarden.intake.server.prestarted`)."""
    router = APIRouter(prefix="/v1")

    async def run_in_threadpool(fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(workers, functools.partial(fn, *args))

    router.add_api_route(
        "/sql",
        sql,
        methods=["POST"],
        openapi_extra=_SQL_REQUEST_BODY,
        summary="Run one governed statement",
        description=(
            "One statement (`sql`) or an atomic batch (`statements`); reads answer Arrow IPC "
            "when the Accept header asks."
        ),
    )

    @router.get("/tables")
    async def tables(request: Request) -> Response:
        """Every table the caller may read, with its signals."""
        try:
            agent = identify(
                warden, request.headers.get("authorization"), request.headers.get(AgentHeader)
            )
        except LakewardenError as exc:
            return error_response(exc, None)
        states = await run_in_threadpool(warden.tables, agent)
        return JSONResponse({"tables": [json_value(t.summary()) for t in states]})

    @router.get("/tables/{name}")
    async def table(name: str, request: Request) -> Response:
        """One table: schema, signals, schema changes (404 unless the caller may read it)."""
        try:
            agent = identify(
                warden, request.headers.get("authorization"), request.headers.get(AgentHeader)
            )
            described = await run_in_threadpool(warden.describe, name, agent)
        except LakewardenError as exc:
            return error_response(exc, None)
        return JSONResponse(json_value(described))

    @router.get("/snapshots")
    async def snapshots(
        request: Request,
        table: str | None = None,
        limit: Annotated[int, Query(gt=0, le=10_000)] = 50,
    ) -> Response:
        """Snapshots newest first: id, time, agent, message, trace_id."""
        try:
            caller = identify(
                warden, request.headers.get("authorization"), request.headers.get(AgentHeader)
            )
            # 404 for a table that never was, or that the caller may not read
            snaps = await run_in_threadpool(warden.snapshots, table, limit, caller)
        except LakewardenError as exc:
            return error_response(exc, None)
        return JSONResponse({"snapshots": [json_value(s.to_dict()) for s in snaps]})

    @router.post("/tables/{name}/restore")
    async def restore(name: str, body: RestoreRequest, request: Request) -> Response:
        """Make the table equal to its content at ``snapshot_id``, as one new commit."""
        traceparent = traceparent_of(request)
        try:
            agent = identify(
                warden, request.headers.get("authorization"), request.headers.get(AgentHeader)
            )
            result = await run_in_threadpool(
                lambda: warden.restore(name, body.snapshot_id, agent=agent, traceparent=traceparent)
            )
        except LakewardenError as exc:
            return error_response(exc, getattr(exc, "trace_id", None) or trace_id_of(traceparent))
        payload = result_json(result)
        payload["trace_id"] = result.trace_id or trace_id_of(traceparent)
        return JSONResponse(payload)

    @router.post("/tables/{name}/anomaly/accept")
    async def accept_anomaly(name: str, request: Request) -> Response:
        """Take the table's current volume level and write pace as its new normal."""
        try:
            agent = identify(
                warden, request.headers.get("authorization"), request.headers.get(AgentHeader)
            )
            accepted = await run_in_threadpool(lambda: warden.accept_anomaly(name, agent=agent))
        except LakewardenError as exc:
            return error_response(exc, None)
        return JSONResponse(json_value(accepted))

    @router.get("/audit")
    async def audit(
        request: Request,
        agent: str | None = None,
        limit: Annotated[int, Query(gt=0, le=10_000)] = 100,
    ) -> Response:
        """Audit records newest first: agent, decision, summary, violations, snapshot, trace
        (an agent sees its own; admins see every agent's)."""
        try:
            caller = identify(
                warden, request.headers.get("authorization"), request.headers.get(AgentHeader)
            )
            records = await run_in_threadpool(lambda: warden.audit(agent, limit, caller=caller))
        except LakewardenError as exc:
            return error_response(exc, None)
        return JSONResponse({"records": [json_value(r) for r in records]})

    return router


def install_error_handlers(app: FastAPI) -> None:
    """Every error, including malformed bodies and unknown routes, in the one error shape."""

    async def invalid_body(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        error = InvalidRequest("the request body is not valid", request_violations(exc.errors()))
        return error_response(error, trace_id_of(traceparent_of(request)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else "http_error"
        body = {
            "error": {"code": code, "message": str(exc.detail), "violations": []},
            "trace_id": None,
        }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        return internal_error_response(request.scope)  # Starlette re-raises exc after this

    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
