"""A statement request, the same for REST and MCP: one set of rules, one way to run it.

``POST /v1/sql``'s body and the ``query``/``execute`` tools' arguments are both a
:class:`SqlRequest`, so an agent meets the same refusals, in the same error shape, whichever
door a statement came through; :func:`run_statement` hands it to a pooled core session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lakewarden.errors import InvalidRequest, TooLarge, Violation
from lakewarden.intake.caller import request_violations, trace_id_of
from lakewarden.intake.jsonvalues import result_json

if TYPE_CHECKING:
    from lakewarden.core.warden import Warden
    from lakewarden.result import Result

__all__ = [
    "SqlRequest",
    "request_from_arguments",
    "request_from_body",
    "run_statement",
    "statement_json",
]


# What SqlRequest._one_of enforces, in its JSON schema too (the OpenAPI request body), so that
# a body the document allows is one the server takes.
_ONE_OF: dict[str, Any] = {
    "oneOf": [
        {
            "required": ["sql"],
            "properties": {"sql": {"type": "string"}, "statements": {"type": "null"}},
        },
        {
            "required": ["statements"],
            "properties": {
                "statements": {"type": "array"},
                "sql": {"type": "null"},
                "params": {"type": "null"},
            },
        },
    ]
}


class SqlRequest(BaseModel):
    """One statement (``sql``), or an atomic batch (``statements``): exactly one of the two."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_OF)

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


def request_from_body(raw: bytes, max_params: int) -> SqlRequest:
    """The body of ``POST /v1/sql``, validated straight from its bytes.

    Done here rather than by a FastAPI body parameter: pydantic-core parses and validates JSON
    bytes in one pass, while FastAPI's body handling costs about 0.2 ms more per request, which
    every agent statement would pay.
    """
    try:
        request = SqlRequest.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise InvalidRequest(
            "the request body is not valid", request_violations(exc.errors())
        ) from exc
    _check_params(request, max_params)
    return request


def request_from_arguments(fields: dict[str, Any], max_params: int) -> SqlRequest:
    """The same request from already-decoded values (an MCP tool's arguments)."""
    try:
        request = SqlRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(
            "the tool arguments are not valid", request_violations(exc.errors())
        ) from exc
    _check_params(request, max_params)
    return request


def _check_params(request: SqlRequest, limit: int) -> None:
    """Refuse more bound parameters than ``limit`` before any of them reaches the engine."""
    count = len(request.params or ())
    if count > limit:
        raise TooLarge(
            f"{count} bound parameters is more than the limit of {limit}",
            [Violation("params", "bound parameters limit", measured=count, limit=limit)],
        )


def run_statement(
    warden: Warden,
    agent: str,
    request: SqlRequest,
    traceparent: str | None,
    *,
    expect: str | None = None,
) -> Result:
    """Run ``request`` for ``agent`` on a pooled session; blocking, so on a worker thread.

    ``expect`` ("read" or "write") is for a door with one entry per kind: the session refuses
    a single statement of the other kind after its own analysis, traced and audited.
    """
    max_rows = request.max_rows
    if max_rows is None and warden.row_limit(agent, None) is None:
        # Neither the request nor the agent's policy caps the rows: an unbounded SELECT must
        # not exhaust the sidecar's memory (LAKEWARDEN_MAX_ROWS, validated at start-up).
        max_rows = warden.settings.max_rows
    with warden.pooled_session(agent) as s:
        if request.statements is not None:
            return s.batch(request.statements, traceparent=traceparent, dry_run=request.dry_run)
        assert request.sql is not None
        return s.sql(
            request.sql,
            request.params,
            max_rows=max_rows,
            traceparent=traceparent,
            dry_run=request.dry_run,
            expect=expect,
        )


def statement_json(result: Result, traceparent: str | None) -> dict[str, Any]:
    """The answer to a statement (or a restore): its result, and the trace it ran in."""
    payload = result_json(result)
    payload["trace_id"] = result.trace_id or trace_id_of(traceparent)
    return payload
