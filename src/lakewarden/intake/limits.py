"""Bounds on what one HTTP request may cost, enforced before any authentication work.

- :class:`BoundedHttpToolsProtocol`: uvicorn's httptools protocol with a cap on the request line
  plus headers. httptools (llhttp) has none and builds each header value by repeated
  concatenation, so a 50 MB header held a core for half a minute and 1.7 GB of memory; here the
  raw bytes of an unfinished head are counted as they arrive and the connection is answered 431
  and closed once they pass the cap; a head that has not arrived within its time limit is
  answered 408 and the connection closed.
- :func:`bounded_body`: every request body (REST, the ``POST /v1/sql`` fast path and ``/mcp``)
  is refused with 413 when its Content-Length is over the cap, or read while counting, chunked
  or not, and refused as soon as it passes the cap; one that takes longer than its time limit
  to arrive is refused with 408.
- :func:`token_gate`: when the policy has tokens, nothing reaches the MCP app (no session, no
  ``tools/list``) without a valid bearer token.
- :func:`cap_address_space`: the server process's address-space limit, the hard memory bound
  that holds where DuckDB's own memory limit does not (see SECURITY.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import secrets
from typing import ClassVar

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lakewarden.core.warden import Warden
from lakewarden.errors import LakewardenError, StatementTimeout, TooLarge, Violation
from lakewarden.intake.caller import STATUS, error_body, identify

__all__ = [
    "BoundedHttpToolsProtocol",
    "bounded_body",
    "bounded_protocol",
    "cap_address_space",
    "error_bytes",
    "send_error",
    "token_gate",
]

log = logging.getLogger(__name__)

_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


def error_bytes(status: int, reason: str, error: LakewardenError, headers: bytes = b"") -> bytes:
    """A whole HTTP response carrying ``error``, for a protocol to write before any app runs;
    ``headers``: more header lines, each ending in CRLF."""
    body = json.dumps(error_body(error, secrets.token_hex(16))).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    return head.encode("ascii") + headers + b"\r\n" + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a cap on the head of each request (``h11_max_incomplete_event_size``
    of uvicorn's config, the same knob uvicorn gives h11) and a time limit on receiving it:
    uvicorn has none, so a client sending a byte now and then held a connection forever.
    :func:`bounded_protocol` sets the time limit."""

    head_timeout_s: ClassVar[float] = 10.0
    _head_bytes = 0
    _in_head = True  # a new connection starts with a request head
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte is bounded too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # the previous request is still being answered
            return
        error = StatementTimeout(
            f"the request head did not arrive within {self.head_timeout_s:g} s",
            [Violation("request_read_timeout", "request head time limit")],
        )
        self.transport.write(error_bytes(408, "Request Timeout", error))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # what follows is the next request's head

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        counting = self._in_head
        if counting:
            if self._head_timer is None:
                self._arm_head_timer()  # the first bytes of the next request's head
            self._head_bytes += len(data)
        cap = self.config.h11_max_incomplete_event_size or 0
        super().data_received(data)
        # Checked after feeding: a read that ends the head and carries body bytes too is not
        # over the cap; only a head still unfinished past the cap is.
        if counting and self._in_head and cap and self._head_bytes > cap:
            self._refuse_head(cap)

    def _refuse_head(self, cap: int) -> None:
        error = TooLarge(
            f"the request line and headers are larger than {cap} bytes",
            [Violation("header_size", "request head bytes limit", limit=cap)],
        )
        self.transport.write(error_bytes(431, "Request Header Fields Too Large", error))
        self.transport.close()
        self._in_head = False


async def send_error(
    send: Send,
    status: int,
    error: LakewardenError,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer ``error`` in the one error shape and close the connection."""
    body = json.dumps(error_body(error, secrets.token_hex(16))).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the rest of the body is never read
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _body_error(measured: int | None, limit: int) -> TooLarge:
    return TooLarge(
        f"the request body is larger than the limit of {limit} bytes",
        [Violation("body_size", "request body bytes limit", measured=measured, limit=limit)],
    )


def bounded_protocol(head_timeout_s: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn, with its time limit on a request head."""
    return type(
        "BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"head_timeout_s": head_timeout_s}
    )


def bounded_body(app: ASGIApp, max_bytes: int, timeout_s: float) -> ASGIApp:
    """``app`` behind a request-body cap of ``max_bytes`` (413 ``too_large`` past it) and a
    time limit of ``timeout_s`` on receiving it (408 ``timeout``).

    The body is read here, at most ``max_bytes`` of it, and handed to ``app`` whole; every
    endpoint's body is a small JSON document, so buffering it costs nothing that matters.
    """

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if declared is None and not chunked and scope["method"] in _BODYLESS:
            await app(scope, receive, send)  # no body to bound (MCP's event stream is a GET)
            return
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await send_error(send, 413, _body_error(int(declared), max_bytes))
            return
        chunks: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        # The client left before its body was whole: nobody to answer, and
                        # no failure of the server's (handed on, it was logged as an
                        # internal error with a traceback, one per client that left).
                        return
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > max_bytes:
                        await send_error(send, 413, _body_error(None, max_bytes))
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            slow = StatementTimeout(
                f"the request body did not arrive within {timeout_s:g} s",
                [Violation("request_read_timeout", "request body time limit", limit=timeout_s)],
            )
            await send_error(send, 408, slow)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return guard


def token_gate(app: ASGIApp, warden: Warden) -> ASGIApp:
    """``app`` (the MCP transport) reachable only with a valid bearer token when the policy has
    tokens: no session is created and no tool is listed for an unknown caller."""

    async def gate(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and warden.policy.requires_tokens:
            try:
                identify(warden, Headers(scope=scope))
            except LakewardenError as exc:
                await send_error(send, STATUS[exc.code], exc)
                return
        await app(scope, receive, send)

    return gate


def cap_address_space(limit: int | None) -> None:
    """Cap this process's address space at ``limit`` bytes (None: leave it as it is).

    DuckDB counts buffer-managed memory (hash tables, sorts, aggregates) against its
    memory_limit, but not the list and string values one function call builds
    (``range(200000000)``, ``repeat(...)``): those grew a server to 20 GB. Past this cap an
    allocation fails, and DuckDB reports it as an out-of-memory error for that statement only.
    Only server processes call this: an application embedding the SDK owns its own process.
    """
    if limit is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        log.info("address space capped at %d bytes", limit)
