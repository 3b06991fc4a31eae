"""The caller of a network intake, the same for REST and MCP: who it is, which trace its call
joins, and the one error shape it is answered with when a call fails.

The doors differ only in framing (an HTTP response, an MCP tool result); what is decided about a
caller is decided here, once, so an agent meets the same identity rules, the same trace
propagation and the same error codes whichever door it uses. Every route and tool runs through
:func:`attend`: identify the caller, run the blocking work on a worker thread, and turn whatever
went wrong into a :class:`Failure` the door renders.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

from lakewarden.errors import LakewardenError, Unauthenticated, Violation
from lakewarden.intake.jsonvalues import json_value
from lakewarden.store.deadline import Cancel, cancel_on
from lakewarden.wire import AGENT_HEADER

if TYPE_CHECKING:
    from lakewarden.core.warden import Warden

__all__ = [
    "ANONYMOUS",
    "CANCEL_EXTENSION",
    "MAX_LISTED",
    "STATUS",
    "Caller",
    "Failure",
    "attend",
    "cancel_of",
    "error_body",
    "identify",
    "request_violations",
    "trace_id_of",
    "traceparent_of",
    "valid_traceparent",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# The key of a request's :class:`Cancel` token in its ASGI scope's extensions: the server's
# protocol cancels it when the client disconnects (see lakewarden.intake.connections).
CANCEL_EXTENSION = "lakewarden.cancel"

# The agent of a call in open mode that names none.
ANONYMOUS = "anonymous"

# The largest ``limit`` a listing (snapshots, audit records) takes, through either door.
MAX_LISTED = 10_000

# The HTTP status of each error code; MCP tool errors carry the same codes without a status.
STATUS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_sql": 400,
    "unauthenticated": 401,
    "policy_denied": 403,
    "not_found": 404,
    "timeout": 408,
    "quality_gate_failed": 409,
    "conflict": 409,
    "too_large": 413,
    "execution_failed": 422,
    "unavailable": 503,
    "insufficient_storage": 507,
}


def cancel_of(scope: Mapping[str, Any] | None) -> Cancel | None:
    """The token that is cancelled when the client of the request in ``scope`` disconnects
    (None when the server does not give one)."""
    token = (scope or {}).get("extensions", {}).get(CANCEL_EXTENSION)
    return token if isinstance(token, Cancel) else None


def identify(warden: Warden, headers: Mapping[str, str]) -> str:
    """The calling agent: the bearer token's agent when the policy has tokens, else the agent
    header (open mode); raises :class:`Unauthenticated` for a missing or unknown token."""
    if not warden.policy.requires_tokens:
        return headers.get(AGENT_HEADER) or ANONYMOUS
    scheme, _, token = headers.get("authorization", "").partition(" ")
    agent = warden.policy.agent_for_token(token.strip()) if scheme.lower() == "bearer" else None
    if agent is None:
        raise Unauthenticated(
            "a valid 'Authorization: Bearer <token>' header is required",
            [Violation("unauthenticated", "missing or unknown bearer token")],
        )
    return agent


# The OpenTelemetry propagator's rules (W3C Trace Context), so a traceparent accepted here is
# one the statement's span joins, and the trace id echoed to the caller is the one it will find.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACEPARENT_MAX_CHARS = 512


def valid_traceparent(value: object) -> str | None:
    """``value`` when it is a well-formed W3C traceparent, else None (the core then starts a
    trace of its own for the statement)."""
    if not isinstance(value, str) or len(value) > _TRACEPARENT_MAX_CHARS:
        return None
    value = value.strip(" \t")
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, _flags, future = match.groups()
    if version == "ff" or (version == "00" and future):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return value


def traceparent_of(headers: Mapping[str, str]) -> str | None:
    """The caller's traceparent from its HTTP headers, when well-formed."""
    return valid_traceparent(headers.get("traceparent"))


def trace_id_of(traceparent: str | None) -> str:
    """The trace id of an answer the core gave none (a call refused before analysis, or one
    that runs no statement): the caller's trace, or a fresh id, so every answer carries one
    the caller can quote."""
    return traceparent.split("-")[1] if traceparent else secrets.token_hex(16)


def error_body(error: LakewardenError, trace_id: str | None) -> dict[str, Any]:
    """``{"error": {"code", "message", "violations"}, "trace_id"}``: every refusal and failure,
    from either door."""
    return {"error": json_value(error.to_dict()), "trace_id": trace_id}


def request_violations(errors: Iterable[Any]) -> list[Violation]:
    """pydantic's validation errors as ``invalid_request`` violations, one sentence each."""
    out = []
    for e in errors:
        where = ".".join(map(str, e["loc"]))
        # pydantic prefixes a model validator's own message with "Value error, "
        msg = str(e["msg"]).removeprefix("Value error, ")
        out.append(Violation("invalid_request", f"{where}: {msg}" if where else msg))
    return out


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call, and the W3C traceparent its statement joins (None: a trace of its own)."""

    agent: str
    traceparent: str | None


@dataclass(frozen=True, slots=True)
class Failure:
    """A call that ended in an error, as every door answers it: the error body, and the HTTP
    status REST sends it with. ``internal`` marks a failure of the server, not of the call."""

    body: dict[str, Any]
    status: int
    internal: bool = False

    @classmethod
    def of(cls, error: LakewardenError, trace_id: str | None) -> Failure:
        return cls(error_body(error, trace_id), STATUS.get(error.code, 500))

    @classmethod
    def unexpected(cls, where: str, exc: BaseException | None) -> Failure:
        """A bug, not the caller's doing: the caller gets a fresh id and nothing of the
        exception's text, the log gets the id with ``exc``'s traceback (None when the server
        logs the exception itself, as uvicorn does with one re-raised to it)."""
        incident = secrets.token_hex(16)
        log.error("internal error %s on %s", incident, where, exc_info=exc)
        message = f"the server failed on this request; its log names the failure {incident}"
        body = {
            "error": {"code": "internal_error", "message": message, "violations": []},
            "trace_id": incident,
        }
        return cls(body, 500, internal=True)


async def attend(
    who: Callable[[], str],
    traceparent: str | None,
    work: Callable[[Caller], T],
    workers: Executor | None,
    where: str,
    cancel: Cancel | None = None,
) -> T | Failure:
    """One call through a door: ``who`` names the caller (on the event loop: a token lookup),
    ``work`` runs on ``workers`` (None: anyio's worker threads), and what goes wrong becomes a
    :class:`Failure`. A refusal carries the trace of the statement it refused, else the
    caller's trace id, else a fresh one. ``where`` names the call in the log.

    A read in ``work`` is stopped once ``cancel`` is cancelled (the door saw its client
    disconnect), or once this call is cancelled (the MCP SDK cancels a call whose client has
    gone): the worker thread cannot be taken back, but the engine can stop.
    """
    cancel = cancel or Cancel()

    def run(caller: Caller) -> T:
        with cancel_on(cancel):
            return work(caller)

    try:
        caller = Caller(who(), traceparent)
        if workers is None:
            return await anyio.to_thread.run_sync(run, caller)
        return await asyncio.get_running_loop().run_in_executor(workers, run, caller)
    except asyncio.CancelledError:
        cancel.cancel()
        raise
    except LakewardenError as exc:
        return Failure.of(exc, exc.trace_id or trace_id_of(traceparent))
    except Exception as exc:
        return Failure.unexpected(where, exc)
