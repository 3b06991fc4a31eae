"""A small REST client for a running lakewarden server.

    from lakewarden.client import Client
    with Client("http://127.0.0.1:7117", token="...") as client:
        with client.session("analyst") as s:
            df = s.sql("SELECT * FROM orders").pl()

Errors come back as the same :class:`~lakewarden.errors.LakewardenError` subclasses the in-process
SDK raises, rebuilt from the server's error body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import polars as pl

from lakewarden.errors import (
    ExecutionError,
    InvalidRequest,
    InvalidSQL,
    LakewardenError,
    NotFound,
    PolicyDenied,
    QualityGateFailed,
    StatementTimeout,
    TooLarge,
    Unauthenticated,
    Violation,
)
from lakewarden.transport import ServerUnavailable, Transport
from lakewarden.wire import AGENT_HEADER

__all__ = ["Client", "ClientSession", "RemoteResult", "ServerUnavailable", "Unauthenticated"]


_ERRORS: dict[str, type[LakewardenError]] = {
    cls.code: cls
    for cls in (
        InvalidSQL,
        PolicyDenied,
        QualityGateFailed,
        StatementTimeout,
        ExecutionError,
        NotFound,
        Unauthenticated,
        InvalidRequest,
        TooLarge,
    )
}


def error_from_body(status: int, body: Any) -> LakewardenError:
    """The LakewardenError an error response stands for (any body: proxies answer too)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return LakewardenError(f"HTTP {status}: unexpected response {str(body)[:200]!r}")
    cls = _ERRORS.get(str(error.get("code")), LakewardenError)
    violations = [
        Violation(
            rule=str(v.get("rule", "")),
            detail=str(v.get("detail", "")),
            measured=v.get("measured"),
            limit=v.get("limit"),
        )
        for v in error.get("violations") or []
        if isinstance(v, dict)
    ]
    exc = cls(str(error.get("message", "")), violations)
    exc.trace_id = body.get("trace_id")
    return exc


@dataclass(frozen=True)
class RemoteResult:
    """The JSON answer of ``POST /v1/sql``, shaped like :class:`lakewarden.Result`."""

    kind: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    row_count: int = 0
    truncated: bool = False
    rows_affected: int | None = None
    snapshot_id: int | None = None
    trace_id: str | None = None
    signals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Rules a write broke but was allowed to (warn or observe mode), as the server sent them.
    violations: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RemoteResult:
        return cls(
            kind=body["kind"],
            columns=list(body.get("columns") or []),
            rows=list(body.get("rows") or []),
            row_count=int(body.get("row_count") or 0),
            truncated=bool(body.get("truncated")),
            rows_affected=body.get("rows_affected"),
            snapshot_id=body.get("snapshot_id"),
            trace_id=body.get("trace_id"),
            signals=dict(body.get("signals") or {}),
            violations=list(body.get("violations") or []),
        )

    def pl(self) -> pl.DataFrame:
        """The rows as a polars DataFrame (values as the JSON carried them)."""
        if not self.columns:
            return pl.DataFrame()
        return pl.DataFrame(self.rows, schema=self.columns, orient="row")

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.rows]


class ClientSession:
    """One agent's statements through the REST API (the agent name is used in open mode)."""

    def __init__(self, client: Client, agent: str | None) -> None:
        self.client = client
        self.agent = agent

    def __enter__(self) -> ClientSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def sql(
        self,
        sql: str,
        params: list[Any] | None = None,
        max_rows: int | None = None,
        *,
        traceparent: str | None = None,
    ) -> RemoteResult:
        body: dict[str, Any] = {"sql": sql}
        if params is not None:
            body["params"] = list(params)
        if max_rows is not None:
            body["max_rows"] = max_rows
        headers = self.client.headers(self.agent)
        if traceparent:
            headers["traceparent"] = traceparent
        return RemoteResult.from_json(
            self.client.request("POST", "/v1/sql", json_body=body, headers=headers)
        )


class Client:
    """REST client: ``token`` authenticates under a policy, ``agent`` names an open-mode caller.

    Safe to share between threads: each thread keeps its own connection. A server that cannot be
    reached raises :class:`ServerUnavailable`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        agent: str | None = None,
        *,
        timeout: float = 60.0,
    ) -> None:
        self.token = token
        self.agent = agent
        self._http = Transport(base_url, timeout)

    def headers(self, agent: str | None = None) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        name = agent or self.agent
        if name:
            out[AGENT_HEADER] = name
        return out

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        response = self._http.request(
            method,
            path,
            json_body=json_body,
            params=params,
            headers=self.headers() if headers is None else headers,
        )
        body = response.body()
        if response.status >= 400:
            raise error_from_body(response.status, body)
        return body

    def session(self, agent: str | None = None) -> ClientSession:
        return ClientSession(self, agent or self.agent)

    def tables(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/tables")["tables"])

    def table(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/tables/{name}"))

    def snapshots(self, table: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if table:
            params["table"] = table
        return list(self.request("GET", "/v1/snapshots", params=params)["snapshots"])

    def restore(self, table: str, snapshot_id: int) -> dict[str, Any]:
        return dict(
            self.request(
                "POST", f"/v1/tables/{table}/restore", json_body={"snapshot_id": snapshot_id}
            )
        )

    def accept_anomaly(self, table: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/tables/{table}/anomaly/accept"))

    def audit(self, agent: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if agent:
            params["agent"] = agent
        return list(self.request("GET", "/v1/audit", params=params)["records"])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
