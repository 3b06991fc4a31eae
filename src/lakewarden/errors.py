"""The one exception hierarchy of lakewarden.

Every error an agent can see is a :class:`LakewardenError` with a stable ``code`` (used as the
REST/MCP error code) and a list of structured :class:`Violation` items saying which rule was broken,
what was measured and what the limit was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``rule`` is a stable identifier, ``detail`` a sentence for humans."""

    rule: str
    detail: str
    measured: Any = None
    limit: Any = None
    table: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class LakewardenError(Exception):
    """Base of every lakewarden error."""

    code = "error"
    # Whether sending the same request again may succeed (REST/MCP error field "retryable").
    retryable = False

    def __init__(self, message: str, violations: list[Violation] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.violations: list[Violation] = list(violations or [])
        self.trace_id: str | None = None  # the trace of the refused statement, once known

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "violations": [v.to_dict() for v in self.violations],
        }
        if self.retryable:
            body["retryable"] = True
        return body


class ConfigurationError(LakewardenError):
    """A setting, policy file or lake location is invalid; raised at start-up."""

    code = "invalid_configuration"


class InvalidSQL(LakewardenError):
    """The SQL text is empty, does not parse, or holds more than one statement."""

    code = "invalid_sql"


class PolicyDenied(LakewardenError):
    """The agent's policy (or a security default) refuses the statement; nothing was executed."""

    code = "policy_denied"


class QualityGateFailed(LakewardenError):
    """The write broke a quality contract and was rolled back; nothing was committed."""

    code = "quality_gate_failed"


class Conflict(LakewardenError):
    """Another writer (another sidecar on a shared catalog) committed a conflicting change to
    the same table first; this write was rolled back, nothing was committed. Send it again."""

    code = "conflict"
    retryable = True


class Unavailable(LakewardenError):
    """The sidecar cannot take the statement now: it is shutting down, or the lake's catalog
    database or data path cannot be reached or written. Nothing was committed; send it again
    (to another sidecar, or after the outage)."""

    code = "unavailable"
    retryable = True


class InsufficientStorage(LakewardenError):
    """The lake's data path has no space left for the write; it was rolled back and nothing was
    committed. Send it again once space is freed."""

    code = "insufficient_storage"
    retryable = True


class StatementTimeout(LakewardenError):
    """The statement ran longer than its time limit and was interrupted; nothing was committed."""

    code = "timeout"

    @classmethod
    def after(cls, limit: float | None) -> StatementTimeout:
        return cls(
            f"the statement ran longer than its limit of {limit or 0:g} s and was stopped; "
            "nothing was committed",
            [Violation("timeout", "statement time limit", limit=limit)],
        )


class ExecutionError(LakewardenError):
    """The engine refused or failed the statement (unknown table, type error, ...)."""

    code = "execution_failed"


class Unauthenticated(LakewardenError):
    """The bearer token is missing or names no agent of the server's policy."""

    code = "unauthenticated"


class InvalidRequest(LakewardenError):
    """The request body is not what the REST API accepts."""

    code = "invalid_request"


class NotFound(LakewardenError):
    """A table or snapshot that was named does not exist."""

    code = "not_found"


class TooLarge(LakewardenError):
    """A request body, its parameters, a statement's memory or a result is over its limit."""

    code = "too_large"
