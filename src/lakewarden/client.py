"""A small REST client for a running lakewarden server.

    from lakewarden.client import Client
    with Client("http://127.0.0.1:7117", token="...") as client:
        with client.session("analyst") as s:
            df = s.sql("SELECT * FROM orders").pl()

Errors come back as the same :class:`~lakewarden.errors.LakewardenError` subclasses the in-process
SDK raises, rebuilt from the server's error body; a server that cannot be reached is
:class:`ServerUnavailable`.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import polars as pl

from lakewarden import __version__
from lakewarden.errors import (
    Conflict,
    ExecutionError,
    InsufficientStorage,
    InvalidRequest,
    InvalidSQL,
    LakewardenError,
    NotFound,
    PolicyDenied,
    QualityGateFailed,
    StatementTimeout,
    TooLarge,
    Unauthenticated,
    Unavailable,
    Violation,
)
from lakewarden.wire import AGENT_HEADER

__all__ = ["Client", "ClientSession", "RemoteResult", "ServerUnavailable", "Unauthenticated"]

# uvicorn closes a keep-alive connection after 5 idle seconds. A connection the server closed
# while idle is noticed before reuse, but one it closes just as a request leaves shows only as a
# broken answer, which a POST cannot survive (see Client._send). Giving idle connections up a
# second earlier keeps the client out of that race with a server on uvicorn's defaults.
KEEPALIVE_EXPIRY_S = 4.0
# Sent once more, on a fresh connection, when the connection breaks before the answer: these
# change nothing on the server. A POST may have run its statement, so it is never sent twice.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
_BROKEN = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class ServerUnavailable(LakewardenError):
    """The lakewarden server could not be reached, or the connection broke mid-request."""

    code = "unavailable"


_ERRORS: dict[str, type[LakewardenError]] = {
    cls.code: cls
    for cls in (
        Conflict,
        InvalidSQL,
        PolicyDenied,
        QualityGateFailed,
        StatementTimeout,
        ExecutionError,
        NotFound,
        Unauthenticated,
        InvalidRequest,
        TooLarge,
        # The server answered: its catalog or storage failed (a broken connection to the
        # server itself is ServerUnavailable, raised here, never rebuilt from a body).
        Unavailable,
        InsufficientStorage,
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

    Safe to share between threads: one ``httpx.Client`` underneath, whose pool gives each
    request in flight a keep-alive connection of its own. A server that cannot be reached, or
    that breaks the connection before answering, raises :class:`ServerUnavailable`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        agent: str | None = None,
        *,
        timeout: float = 60.0,
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not an http(s) URL: {base_url!r} ({exc})") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.token = token
        self.agent = agent
        self.base_url = str(url).rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=url,
            timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
            headers={
                "User-Agent": f"lakewarden-client/{__version__}",
                "Accept": "application/json",
            },
            # The sidecar runs beside the agent: a proxy set in the environment for the agent's
            # outside traffic must not carry its statements and token. Certificates are checked
            # against the system's trust store, as the ssl module finds it.
            trust_env=False,
            verify=ssl.create_default_context(),
        )

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
        """The JSON answer of one request, or the :class:`LakewardenError` it stands for."""
        headers = dict(self.headers() if headers is None else headers)
        content = None
        if json_body is not None:
            # Python's own JSON, compact, whatever httpx's version would write.
            content = json.dumps(json_body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        request = self._http.build_request(
            method, path, content=content, params=params, headers=headers
        )
        response = self._send(request)
        try:
            body = response.json()
        except ValueError:  # not JSON: something else answered (a proxy, another server)
            body = response.text
        if response.status_code >= 400:
            raise error_from_body(response.status_code, body)
        return body

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._http.send(request)
        except _BROKEN as exc:
            if request.method not in IDEMPOTENT:
                raise self._unavailable(request, exc) from exc
        except httpx.HTTPError as exc:
            raise self._unavailable(request, exc) from exc
        try:
            return self._http.send(request)
        except httpx.HTTPError as exc:
            raise self._unavailable(request, exc) from exc

    def _unavailable(self, request: httpx.Request, exc: httpx.HTTPError) -> ServerUnavailable:
        where = f"{request.method} {request.url}"
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerUnavailable(
                f"cannot connect to the lakewarden server at {self.base_url} ({where}: {exc}); "
                "is `lakewarden serve` running there? Start it, or give the address it listens on."
            )
        if isinstance(exc, httpx.TimeoutException):
            return ServerUnavailable(
                f"{where}: no answer within {self.timeout:g} s; a statement may still be running "
                "on the server (give the Client a longer timeout for long statements)"
            )
        if isinstance(exc, _BROKEN) and request.method not in IDEMPOTENT:
            return ServerUnavailable(
                f"{where}: the connection broke before the answer ({exc}); the request may or "
                "may not have run on the server, so it was not sent again"
            )
        return ServerUnavailable(
            f"{where} failed: {exc!r}; is `lakewarden serve` running at {self.base_url}?"
        )

    def session(self, agent: str | None = None) -> ClientSession:
        return ClientSession(self, agent or self.agent)

    def tables(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/tables")["tables"])

    def table(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/tables/{_segment(name)}"))

    def snapshots(self, table: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if table:
            params["table"] = table
        return list(self.request("GET", "/v1/snapshots", params=params)["snapshots"])

    def restore(self, table: str, snapshot_id: int) -> dict[str, Any]:
        return dict(
            self.request(
                "POST",
                f"/v1/tables/{_segment(table)}/restore",
                json_body={"snapshot_id": snapshot_id},
            )
        )

    def accept_anomaly(self, table: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/tables/{_segment(table)}/anomaly/accept"))

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


def _segment(name: str) -> str:
    """A table name as one path segment: a ``?`` or ``#`` in it is part of the name, not the URL."""
    return quote(name, safe="")
