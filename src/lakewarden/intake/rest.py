"""REST intake: FastAPI routes over one :class:`~lakewarden.core.warden.Warden` (DESIGN.md, REST).

Every route is a thin adapter: it names its work, and :func:`answerer` identifies the caller,
runs the work on a pool of worker threads and renders the outcome as JSON or the one error
shape. Each statement runs on a session lent by the warden's per-agent pool (a session is one
DuckDB cursor), so many agents are served at once. ``POST /v1/sql``, the path of every agent
statement, is dispatched ahead of FastAPI's stack.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Annotated, Any

import pyarrow as pa
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from lakewarden.core.warden import Warden
from lakewarden.errors import InvalidRequest, Unauthenticated
from lakewarden.intake.caller import (
    MAX_LISTED,
    Caller,
    Failure,
    attend,
    cancel_of,
    identify,
    request_violations,
    trace_id_of,
    traceparent_of,
)
from lakewarden.intake.jsonvalues import json_value
from lakewarden.intake.openapi import (
    AnomalyAccepted,
    AuditList,
    SnapshotList,
    StatementAnswer,
    TableDescription,
    TableList,
    error_responses,
)
from lakewarden.intake.statements import (
    SqlRequest,
    request_from_body,
    run_statement,
    statement_json,
)
from lakewarden.result import Result
from lakewarden.wire import ARROW_STREAM, TRACE_ID_HEADER, TRUNCATED_HEADER

__all__ = [
    "answerer",
    "build_router",
    "fast_path",
    "install_error_handlers",
    "sql_endpoint",
]


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    snapshot_id: Annotated[int, Field(ge=0)]


_SQL_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SqlRequest.model_json_schema()}},
    }
}


# An Arrow answer has no JSON body to carry the trace id and the truncation flag.
_ARROW_HEADERS = {
    TRACE_ID_HEADER: {
        "description": "Of an Arrow IPC answer: the statement's trace id",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    },
    TRUNCATED_HEADER: {
        "description": "Of an Arrow IPC answer: whether the rows were cut at the row limit",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
}


def failure_response(failure: Failure) -> JSONResponse:
    # After a failure nobody planned for, the connection is not reused: where the exception
    # is re-raised to uvicorn, uvicorn closes it anyway, and the answer says so.
    headers = {"Connection": "close"} if failure.internal else None
    return JSONResponse(failure.body, status_code=failure.status, headers=headers)


def internal_error_response(scope: Scope) -> JSONResponse:
    """The 500 for an exception about to be re-raised to uvicorn, which logs its traceback."""
    where = f"{scope.get('method')} {scope.get('path')}"
    return failure_response(Failure.unexpected(where, None))


Work = Callable[[Caller], Any]
Answer = Callable[[Request, Work], Awaitable[Response]]


def answerer(warden: Warden, workers: Executor) -> Answer:
    """``answer(request, work)``: the one way a route answers.

    ``work(caller)`` runs on ``workers`` and returns a :class:`Response`, a statement's
    :class:`Result`, or JSON-able data; it is rendered there too, so the event loop only sends
    bytes and a request costs one hand-off each way. Workers are a plain thread pool: handing
    a job to it and back costs about 0.12 ms less than Starlette's ``run_in_threadpool``
    (anyio) on these machines. See :func:`~lakewarden.intake.caller.attend` for the rest.
    """

    def rendered(work: Work, caller: Caller) -> Response:
        value = work(caller)
        if isinstance(value, Response):
            return value
        if isinstance(value, Result):
            return JSONResponse(statement_json(value, caller.traceparent))
        return JSONResponse(json_value(value))

    async def answer(request: Request, work: Work) -> Response:
        outcome = await attend(
            lambda: identify(warden, request.headers),
            traceparent_of(request.headers),
            lambda caller: rendered(work, caller),
            workers,
            f"{request.method} {request.scope['path']}",
            cancel_of(request.scope),
        )
        return failure_response(outcome) if isinstance(outcome, Failure) else outcome

    return answer


def _arrow_stream(result: Result, trace_id: str) -> Response:
    table = result.arrow()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return Response(
        bytes(sink.getvalue().to_pybytes()),
        media_type=ARROW_STREAM,
        headers={TRACE_ID_HEADER: trace_id, TRUNCATED_HEADER: str(result.truncated).lower()},
    )


SqlEndpoint = Callable[[Request], Awaitable[Response]]


def sql_endpoint(warden: Warden, workers: Executor) -> SqlEndpoint:
    """``POST /v1/sql``: every agent statement comes through here (see :func:`fast_path`)."""
    answer = answerer(warden, workers)

    async def sql(request: Request) -> Response:
        """Run one governed statement; reads answer Arrow IPC when the Accept header asks."""
        raw = await request.body()
        arrow = ARROW_STREAM in request.headers.get("accept", "")

        def run(caller: Caller) -> Response | Result:
            body = request_from_body(raw, warden.settings.max_params)
            result = run_statement(warden, caller.agent, body, caller.traceparent)
            if arrow and result.kind == "read":
                return _arrow_stream(result, result.trace_id or trace_id_of(caller.traceparent))
            return result

        return await answer(request, run)

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
    answer = answerer(warden, workers)
    router.add_api_route(
        "/sql",
        sql,
        methods=["POST"],
        openapi_extra=_SQL_REQUEST_BODY,
        responses={
            200: {
                "model": StatementAnswer,
                "description": "The statement's outcome; a read as an Arrow IPC stream when "
                "the Accept header asks for one",
                "content": {ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}},
                "headers": _ARROW_HEADERS,
            },
            **error_responses(400, 403, 408, 409, 413, 422, 507),
        },
        summary="Run one governed statement",
        description=(
            "One statement (`sql`) or an atomic batch (`statements`); reads answer Arrow IPC "
            "when the Accept header asks."
        ),
    )

    @router.get("/tables", responses={200: {"model": TableList}, **error_responses()})
    async def tables(request: Request) -> Response:
        """Every table the caller may read, with its signals."""
        return await answer(
            request, lambda c: {"tables": [t.summary() for t in warden.tables(c.agent)]}
        )

    @router.get(
        "/tables/{name}", responses={200: {"model": TableDescription}, **error_responses(404)}
    )
    async def table(name: str, request: Request) -> Response:
        """One table: schema, signals, schema changes (404 unless the caller may read it)."""
        return await answer(request, lambda c: warden.describe(name, c.agent))

    @router.get("/snapshots", responses={200: {"model": SnapshotList}, **error_responses(400, 404)})
    async def snapshots(
        request: Request,
        table: str | None = None,
        limit: Annotated[int, Query(gt=0, le=MAX_LISTED)] = 50,
    ) -> Response:
        """Snapshots newest first: id, time, agent, message, trace_id."""
        # 404 for a table that never was, or that the caller may not read
        return await answer(
            request,
            lambda c: {"snapshots": [s.to_dict() for s in warden.snapshots(table, limit, c.agent)]},
        )

    @router.post(
        "/tables/{name}/restore",
        responses={
            200: {"model": StatementAnswer},
            **error_responses(400, 403, 404, 408, 409, 422, 507),
        },
    )
    async def restore(name: str, body: RestoreRequest, request: Request) -> Response:
        """Make the table equal to its content at ``snapshot_id``, as one new commit."""
        return await answer(
            request,
            lambda c: warden.restore(
                name, body.snapshot_id, agent=c.agent, traceparent=c.traceparent
            ),
        )

    @router.post(
        "/tables/{name}/anomaly/accept",
        responses={200: {"model": AnomalyAccepted}, **error_responses(403, 404)},
    )
    async def accept_anomaly(name: str, request: Request) -> Response:
        """Take the table's current volume level and write pace as its new normal."""
        return await answer(request, lambda c: warden.accept_anomaly(name, agent=c.agent))

    @router.get("/audit", responses={200: {"model": AuditList}, **error_responses(400, 403)})
    async def audit(
        request: Request,
        agent: str | None = None,
        limit: Annotated[int, Query(gt=0, le=MAX_LISTED)] = 100,
    ) -> Response:
        """Audit records newest first: agent, decision, summary, violations, snapshot, trace
        (an agent sees its own; admins see every agent's)."""
        return await answer(
            request, lambda c: {"records": warden.audit(agent, limit, caller=c.agent)}
        )

    return router


# The code of an error FastAPI or Starlette raise before a route runs, by its status.
_FRAMEWORK_CODES = {400: "invalid_request", 404: "not_found"}


def install_error_handlers(app: FastAPI, warden: Warden) -> None:
    """Every error, including malformed requests and unknown routes, in the one error shape.

    FastAPI reads and validates a request before its route runs, and so before the route
    identifies the caller: here the caller is identified first, so one without a valid token
    is answered 401 whatever it sent, and learns nothing of what the API would have accepted.
    """

    def unauthenticated(request: Request) -> Response | None:
        try:
            identify(warden, request.headers)
        except Unauthenticated as refused:
            return failure_response(
                Failure.of(refused, trace_id_of(traceparent_of(request.headers)))
            )
        return None

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        error = InvalidRequest("the request is not valid", request_violations(exc.errors()))
        trace_id = trace_id_of(traceparent_of(request.headers))
        return unauthenticated(request) or failure_response(Failure.of(error, trace_id))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _FRAMEWORK_CODES.get(exc.status_code, "http_error")
        body = {
            "error": {"code": code, "message": str(exc.detail), "violations": []},
            "trace_id": trace_id_of(traceparent_of(request.headers)),
        }
        return unauthenticated(request) or JSONResponse(
            body, status_code=exc.status_code, headers=exc.headers
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        return internal_error_response(request.scope)  # Starlette re-raises exc after this

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
