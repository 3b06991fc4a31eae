"""The REST API's answers as ``/openapi.json`` declares them: every success body and the one
error body, as pydantic models, and which statuses each operation answers with.

The routes render their answers themselves (see :mod:`lakewarden.intake.rest`), so these models
validate nothing at run time: they are the contract a client reads, and the API contract test
(``tests/test_api_contract.py``) holds the server to it, answer by answer. Objects with a fixed
set of fields forbid others, so a field added to an answer without its model fails that test
instead of going undocumented.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from lakewarden.intake.caller import ANONYMOUS
from lakewarden.wire import AGENT_HEADER

__all__ = [
    "AnomalyAccepted",
    "AuditList",
    "ErrorBody",
    "SnapshotList",
    "StatementAnswer",
    "TableDescription",
    "TableList",
    "error_responses",
    "install",
]

# JSON has no NaN or infinity: a float that is not finite travels as one of these strings
# (lakewarden.intake.jsonvalues), e.g. the open side of an anomaly range.
JsonFloat = float | Literal["NaN", "Infinity", "-Infinity"]
TraceId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$", description="W3C trace id (hex)")]


class _Fixed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ----------------------------------------------------------------------------------


ErrorCode = Literal[
    "invalid_request",
    "invalid_sql",
    "unauthenticated",
    "policy_denied",
    "not_found",
    "timeout",
    "quality_gate_failed",
    "conflict",
    "too_large",
    "execution_failed",
    "unavailable",
    "insufficient_storage",
    "internal_error",
    "http_error",
]


class ViolationBody(_Fixed):
    """One broken rule; ``measured``, ``limit`` and ``table`` appear when they are known."""

    rule: str
    detail: str
    measured: Any = None
    limit: Any = None
    table: str | None = None


class ErrorDetail(_Fixed):
    code: ErrorCode
    message: str
    violations: list[ViolationBody]
    retryable: bool = Field(
        False,
        description="Present (true) when the same request may succeed if sent again; "
        "nothing was committed.",
    )


class ErrorBody(_Fixed):
    """Every refusal and failure: the error, and the trace it can be found under."""

    error: ErrorDetail
    trace_id: TraceId


# Each status an error can come with, and what it means; the codes under one status are the
# ``error.code`` values it carries.
_ERRORS: dict[int, str] = {
    400: "The request is malformed (`invalid_request`) or its SQL is not one statement that "
    "parses (`invalid_sql`).",
    401: "The bearer token is missing or names no agent of the policy (`unauthenticated`).",
    403: "The caller's policy, or a security default, refuses it (`policy_denied`); nothing "
    "was executed.",
    404: "The table or snapshot does not exist, or the caller may not read it (`not_found`).",
    408: "The statement ran past its time limit, or the request did not arrive within its "
    "own (`timeout`); nothing was committed.",
    409: "The write broke a quality contract (`quality_gate_failed`) or another writer "
    "committed a conflicting change first (`conflict`, retryable); nothing was committed.",
    413: "The request body, its parameters, the statement's memory or its result is over its "
    "limit (`too_large`).",
    422: "The engine refused or failed the statement (`execution_failed`).",
    431: "The request line and headers are over their limit (`too_large`).",
    500: "The server failed (`internal_error`); its log names the failure by the answer's "
    "trace id.",
    503: "The sidecar is shutting down, or the lake cannot be reached (`unavailable`, "
    "retryable); nothing was committed.",
    507: "The lake's data path has no space left for the write (`insufficient_storage`, "
    "retryable); nothing was committed.",
}

# What any request may meet before its operation runs: no valid token, a request that does not
# arrive in time or is too large, a server failing or going away.
_ANY_REQUEST = (401, 408, 413, 431, 500, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for an operation's own error ``statuses`` and those any request
    may meet, each with the one error body."""
    return {
        status: {"model": ErrorBody, "description": _ERRORS[status]}
        for status in sorted({*statuses, *_ANY_REQUEST})
    }


# -- tables and their signals ----------------------------------------------------------------


class ColumnBody(_Fixed):
    name: str
    type: str
    null_count: int
    null_ratio: float


class TableSummary(_Fixed):
    """A table's signals: size, columns, freshness and schema changes."""

    table: str
    rows: int
    columns: list[ColumnBody]
    last_modified: float | None = Field(description="Epoch seconds of the last commit")
    last_writer: str | None
    event_time_column: str | None
    last_event_time: float | None = Field(description="Epoch seconds: the newest event time")
    snapshot_id: int | None = Field(description="The snapshot these figures are true at")
    profiled_at: float | None = Field(description="Epoch seconds of the last full profile")
    schema_changes: dict[str, int] = Field(description="Changes seen, by kind")


class SchemaChangeBody(_Fixed):
    column: str
    change: Literal["column_added", "column_removed", "type_changed"]
    old_type: str | None
    new_type: str | None


class TableSignalsBody(TableSummary):
    """What one write did to one table, and where the table now stands."""

    rows_inserted: int
    rows_deleted: int
    rows_updated: int
    schema_diff: list[SchemaChangeBody]
    dropped: bool


class FindingBody(_Fixed):
    """One contract check: ``check`` names it, e.g. ``null_ratio:email``."""

    check: str
    passing: bool
    detail: str
    measured: Any
    limit: Any
    expected: str


class ExpectedNow(_Fixed):
    expected: JsonFloat | None
    lower: JsonFloat | None
    upper: JsonFloat | None
    profile: str | None
    reason: str


class MonitoredBody(_Fixed):
    """One anomaly-monitored signal: its value, verdict and recent values."""

    signal: Literal["volume", "freshness"]
    value: JsonFloat | None
    score: JsonFloat | None
    anomalous: bool
    expected: JsonFloat | None
    lower: JsonFloat | None
    upper: JsonFloat | None
    training_size: int
    reason: str
    profile: str | None
    history: list[JsonFloat]
    per: Literal["write", "hour"] | None = None
    now: ExpectedNow | None = None


class TableDescription(TableSummary):
    """A table's signals, with the state of each of its contract checks and monitors."""

    checks: list[FindingBody]
    monitors: dict[str, MonitoredBody]


class TableList(_Fixed):
    tables: list[TableSummary]


class AnomalyAccepted(_Fixed):
    table: str
    accepted_at: float = Field(description="Epoch seconds")
    changed: bool = Field(description="Whether any monitor's normal moved")
    monitors: dict[str, MonitoredBody]


# -- statements ------------------------------------------------------------------------------


class StatementAnswer(_Fixed):
    """A statement's outcome (a restore's too): rows for a read; rows affected, the commit's
    snapshot and each changed table's signals for a write."""

    kind: Literal["read", "write", "ddl"]
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    rows_affected: int | None
    snapshot_id: int | None
    trace_id: TraceId
    signals: dict[str, TableSignalsBody]
    violations: list[ViolationBody] = Field(
        default_factory=list,
        description="Rules broken but not enforced (warn or observe mode)",
    )
    dry_run: bool = Field(False, description="Judged and rolled back: nothing was committed")
    statements: list[StatementAnswer] = Field(
        default_factory=list, description="Of an atomic batch: one answer per statement"
    )


# -- history ---------------------------------------------------------------------------------


class SnapshotBody(_Fixed):
    snapshot_id: int
    time: str = Field(description="ISO 8601")
    agent: str | None
    message: str | None
    trace_id: str | None
    span_id: str | None
    changes: dict[str, list[int | str]] = Field(
        description="DuckLake's changes by kind: table ids, or names of what was created"
    )
    summary: str | None
    rows_added: int | None = None
    rows_removed: int | None = None


class SnapshotList(_Fixed):
    snapshots: list[SnapshotBody]


class AuditRecordBody(_Fixed):
    time: str = Field(description="ISO 8601")
    agent: str | None
    decision: str | None = Field(description="allowed, denied, blocked, failed or restored")
    operation: str | None
    summary: str | None
    statement_hash: str | None = Field(description="SHA-256 of the statement text")
    tables: list[str]
    violations: list[ViolationBody]
    snapshot_id: int | None
    trace_id: str | None


class AuditList(_Fixed):
    records: list[AuditRecordBody]


# -- the document ----------------------------------------------------------------------------

_BEARER = "bearer"
_FASTAPI_VALIDATION = "#/components/schemas/HTTPValidationError"
_AGENT_PARAMETER = {
    "name": AGENT_HEADER,
    "in": "header",
    "required": False,
    "description": "The calling agent (open mode only: a server with agent tokens ignores it)",
    "schema": {"type": "string", "default": ANONYMOUS},
}


def install(app: FastAPI, *, tokens: bool) -> None:
    """Serve ``app``'s OpenAPI document as the server really behaves.

    FastAPI declares a 422 with its own validation body on every operation that takes
    parameters; lakewarden answers a malformed request 400 ``invalid_request`` in the one error
    body (declared by :func:`error_responses`), so those are taken out. With ``tokens`` (a
    policy with agent tokens) every operation needs a bearer token; without, the caller names
    itself in the agent header and is never answered 401 (open mode, loopback only).
    """

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _drop_fastapi_validation(doc)
            if tokens:
                doc["components"]["securitySchemes"] = {
                    _BEARER: {"type": "http", "scheme": "bearer"}
                }
                doc["security"] = [{_BEARER: []}]
            else:
                for operation in _operations(doc):
                    operation.setdefault("parameters", []).append(_AGENT_PARAMETER)
                    del operation["responses"]["401"]  # no token is asked for
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def _operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for path in doc.get("paths", {}).values() for op in path.values()]


def _drop_fastapi_validation(doc: dict[str, Any]) -> None:
    for operation in _operations(doc):
        declared = operation["responses"].get("422", {})
        schema = declared.get("content", {}).get("application/json", {}).get("schema", {})
        if schema.get("$ref") == _FASTAPI_VALIDATION:
            del operation["responses"]["422"]
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
