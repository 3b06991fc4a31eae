"""The REST client's HTTP transport: one keep-alive connection per thread, on the stdlib.

An agent's statement is a small request and a small answer, so the client's own per-request cost
is part of every statement's latency. ``http.client`` on a kept-alive connection costs about half
of what httpx does per request (see ``benchmarks/RESULTS.md``, rest_latency), and the client needs
none of httpx's extras (HTTP/2, proxies, cookies).

A connection the server closed while idle (uvicorn drops idle keep-alive connections after a few
seconds) is noticed before it is reused, as httpcore does: an idle socket that is readable has
been closed, so a new connection is opened. A request is never sent twice, because a statement
may be a write.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from lakewarden.errors import LakewardenError

__all__ = ["Response", "ServerUnavailable", "Transport"]


class ServerUnavailable(LakewardenError):
    """The lakewarden server could not be reached, or the connection broke mid-request."""

    code = "unavailable"


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    content: bytes

    def body(self) -> Any:
        """The JSON body, or the text when the answer is not JSON (e.g. from a proxy)."""
        try:
            return json.loads(self.content)
        except ValueError:
            return self.content.decode("utf-8", "replace")


class Transport:
    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        all_headers = dict(headers or {})
        payload = None
        if json_body is not None:
            payload = json.dumps(json_body, separators=(",", ":")).encode()
            all_headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, target, body=payload, headers=all_headers)
            answer = conn.getresponse()
            content = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self._discard(conn)
            raise ServerUnavailable(
                f"{method} {self.base_url}{target} failed: {exc!r}; is `lakewarden serve` "
                "running at that address?"
            ) from exc
        if answer.will_close:
            self._discard(conn)
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, content)

    def close(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.close()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            self._discard(conn)
            conn = None
        if conn is None or conn not in self._open:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout)
            with self._lock:
                self._open.add(conn)
            self._local.conn = conn
        return conn

    def _discard(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None


def _closed_by_peer(sock: Any) -> bool:
    # Between requests nothing is due from the server: a readable socket means EOF (or junk).
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
