"""The REST client's HTTP/1.1 transport: one keep-alive connection per thread.

An agent's statement is one small request and one small answer, so the client's own cost per
request is part of every statement's latency. On these machines ``http.client`` spent about
0.9 ms of CPU per request (its header parsing goes through the ``email`` package) and httpx
more; writing the request in one ``sendall`` and reading the answer with the few rules below
costs about 0.3 ms (``benchmarks/RESULTS.md``, rest_latency). The client needs nothing else
from HTTP: no redirects, cookies, proxies or HTTP/2.

What is read: a status line, headers, then a body framed by ``Transfer-Encoding: chunked``,
``Content-Length``, or the end of the connection; 1xx answers are skipped. A connection the
server closed while idle (uvicorn drops idle keep-alive connections after a few seconds) is
noticed before reuse, as httpcore does: an idle socket that is readable has been closed. A
request is never sent twice, because a statement may be a write.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from lakewarden import __version__
from lakewarden.errors import LakewardenError

__all__ = ["Response", "ServerUnavailable", "Transport"]

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one answer
_CHUNK = 256 * 1024


class ServerUnavailable(LakewardenError):
    """The lakewarden server could not be reached, or the connection broke mid-request."""

    code = "unavailable"


class _ProtocolError(Exception):
    """The peer's answer is not HTTP/1.x as this transport reads it."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    content: bytes

    def body(self) -> Any:
        """The JSON body, or the text when the answer is not JSON (e.g. from a proxy)."""
        try:
            return json.loads(self.content)
        except ValueError:
            return self.content.decode("utf-8", "replace")


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def closed_by_peer(self) -> bool:
        # Between requests nothing is due from the server: readable means EOF (or junk).
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable) or bool(self.buffer)

    def exchange(self, request: bytes, head_only: bool) -> tuple[Response, bool]:
        """Send one request, read its answer; also says whether the connection stays usable."""
        self.sock.sendall(request)
        while True:
            version, status, headers = self._read_head()
            if not 100 <= status < 200:
                break
        keep = _keep_alive(version, headers)
        if head_only or status in (204, 304):
            content = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            content = self._read_chunked()
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError as exc:
                raise _ProtocolError(f"bad Content-Length {headers['content-length']!r}") from exc
            content = self._read_exactly(length)
        else:
            content, keep = self._read_to_end(), False
        return Response(status, headers, content), keep and not self.buffer

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(_CHUNK)
        if not data:
            raise _ProtocolError("the server closed the connection before answering")
        self.buffer += data

    def _read_line_block(self, end: bytes, limit: int) -> bytes:
        while (at := self.buffer.find(end)) < 0:
            if len(self.buffer) > limit:
                raise _ProtocolError("answer headers too large")
            self._fill()
        block, self.buffer = self.buffer[:at], self.buffer[at + len(end) :]
        return block

    def _read_head(self) -> tuple[str, int, dict[str, str]]:
        lines = self._read_line_block(b"\r\n\r\n", MAX_HEAD_BYTES).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise _ProtocolError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _ProtocolError(f"bad header line {line[:100]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return parts[0], int(parts[1]), headers

    def _read_exactly(self, length: int) -> bytes:
        while len(self.buffer) < length:
            self._fill()
        content, self.buffer = self.buffer[:length], self.buffer[length:]
        return content

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size_line = self._read_line_block(b"\r\n", MAX_HEAD_BYTES)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _ProtocolError(f"bad chunk size {size_line[:40]!r}") from exc
            if size == 0:
                while self._read_line_block(b"\r\n", MAX_HEAD_BYTES):  # trailers, if any
                    pass
                return b"".join(chunks)
            chunks.append(self._read_exactly(size))
            if self._read_exactly(2) != b"\r\n":
                raise _ProtocolError("a chunk does not end with CRLF")

    def _read_to_end(self) -> bytes:
        while data := self.sock.recv(_CHUNK):
            self.buffer += data
        content, self.buffer = self.buffer, b""
        return content


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


class Transport:
    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        self._host_header = parts.netloc.rpartition("@")[2] if not default_port else self._host
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        target = quote(self._prefix + path) + (f"?{urlencode(params)}" if params else "")
        head = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self._host_header}",
            f"User-Agent: lakewarden-client/{__version__}",
            "Accept: application/json",
        ]
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        payload = b""
        if json_body is not None:
            payload = json.dumps(json_body, separators=(",", ":")).encode()
            head.append("Content-Type: application/json")
        if payload or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(payload)}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
        conn = None
        try:
            conn = self._connection()
            response, keep = conn.exchange(request, head_only=method == "HEAD")
        except (OSError, _ProtocolError) as exc:
            if conn is not None:
                self._discard(conn)
            raise ServerUnavailable(
                f"{method} {self.base_url}{target} failed: {exc!r}; is `lakewarden serve` "
                "running at that address?"
            ) from exc
        if not keep:
            self._discard(conn)
        return response

    def close(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.close()

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and (conn not in self._open or conn.closed_by_peer()):
            self._discard(conn)
            conn = None
        if conn is None:
            conn = _Connection(self._connect())
            with self._lock:
                self._open.add(conn)
            self._local.conn = conn
        return conn

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self._host)
        return sock

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
