"""Which HTTP connections the sidecar keeps, and what it does about clients that stop or leave.

:class:`AdmittingProtocol` is the server's HTTP protocol (the bounded-head protocol of
:mod:`lakewarden.intake.limits`) with three more bounds, each found by an attack on a real
server (``python -m benchmarks.bench_slow_clients``):

- **The connection limit counts connections, and refuses connections, not requests.**
  uvicorn's ``limit_concurrency`` answered 503 to *every request* while as many connections
  were open, the agents' own keep-alive connections included: 2,000 idle connections, or 300
  clients sending a head one byte a second, got 93-99% of a working agent's statements
  refused. Here a connection past ``LAKEWARDEN_MAX_CONNECTIONS`` takes the place of another:
  the one slowest to send its first request (or silent the longest), else the one idle the
  longest (nginx reuses idle connections the same way), else the one slowest to send a later
  request; only when every connection is busy on a request is it answered 503
  ``unavailable`` (retryable, ``Retry-After``) and closed. A connection once admitted has its
  requests served; requests in flight stay bounded (past twice the limit, counting those of
  clients that left, a request is answered 503).
- **A client that takes none of its answer for the read timeout is dropped.** asyncio keeps a
  response the client does not read in memory, and ``close()`` waits for it to be sent: a
  client that read a few KB of a 14 MB answer and then stopped held it for good.
- **A client that disconnects cancels its requests' token** (:func:`~lakewarden.intake.caller.
  cancel_of`), so a read it was waiting for is stopped instead of run for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import ClassVar

from starlette.types import Receive, Scope, Send

from lakewarden.errors import Unavailable, Violation
from lakewarden.intake.caller import CANCEL_EXTENSION
from lakewarden.intake.limits import BoundedHttpToolsProtocol, error_bytes, send_error
from lakewarden.store.deadline import Cancel

__all__ = ["AdmittingProtocol", "raise_open_files", "server_protocol"]

log = logging.getLogger(__name__)

# How long a refused connection is still read (and what it sends discarded) after its 503:
# closed at once, the request the client sends next meets a reset, and the client may lose
# the 503 with it.
LINGER_S = 1.0
# At most one log line per this many seconds about refused connections and dropped readers.
NOTICE_EVERY_S = 10.0
RETRY_AFTER_S = 1
# Requests in flight per connection allowed before new ones get 503: one per connection
# open, plus as many for clients that left while theirs ran. At one, 300 clients trickling a
# body filled the count with their own bodies and an agent's statements got 503.
IN_FLIGHT_PER_CONNECTION = 2


class _Notice:
    """Counts of what the server did to connections, logged at most every ``NOTICE_EVERY_S``
    (an attack opens thousands a second; a line each would be a second attack, on the log)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refused = self.evicted = self.slow = self.stalled = 0
        self._last = -NOTICE_EVERY_S

    def seen(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if now - self._last < NOTICE_EVERY_S or not (self.refused or self.slow or self.stalled):
            return
        self._last = now
        log.warning(
            "connections at the limit of %d (LAKEWARDEN_MAX_CONNECTIONS) since the last "
            "report: %d new ones refused with 503; to make room, %d slow requests cut off "
            "and %d idle connections closed; %d clients that stopped reading dropped",
            self.limit,
            self.refused,
            self.slow,
            self.evicted,
            self.stalled,
        )
        self.refused = self.evicted = self.slow = self.stalled = 0


class AdmittingProtocol(BoundedHttpToolsProtocol):
    """The bounded-head protocol with a connection limit that spares admitted connections,
    a limit on how long a client may take none of its answer, and a disconnect token.
    :func:`server_protocol` sets the class variables, one set per server."""

    max_connections: ClassVar[int] = 256
    stall_timeout_s: ClassVar[float] = 10.0
    # Connections still sending their first request (or not started on it), keep-alive
    # connections between requests, and connections sending a request after an earlier one:
    # each oldest first (a dict keeps insertion order). One set per server (server_protocol).
    first: ClassVar[dict[AdmittingProtocol, None]] = {}
    idle: ClassVar[dict[AdmittingProtocol, None]] = {}
    again: ClassVar[dict[AdmittingProtocol, None]] = {}
    notice: ClassVar[_Notice] = _Notice(256)

    _refused = False
    _stall_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._gone = Cancel()
        if len(self.connections) > self.max_connections and not self._make_room():
            self._refuse()
            return
        self.first[self] = None

    def _make_room(self) -> bool:
        """Close one connection to make room for a new one, in this order: the one that has
        been sending its first request (or keeping silent) the longest; the one idle the
        longest; the one sending a later request the longest.

        Idle connections do not go first: with 300 clients sending a head a byte a second,
        the idle ones were only ever the agents' own keep-alive connections between
        statements, and closing those sent the agents to a 503 (measured: 197 of 353
        statements of a working agent refused). Nor does an agent's connection caught between
        the head and the body of a statement (they are two writes for most clients): first
        requests go first, so under a flood of 2,000 connections an agent on its keep-alive
        connection lost 2 of 234 statements when every arriving request went first, and
        none of 279 since.
        """
        for waiting, answer in ((self.first, True), (self.idle, False), (self.again, True)):
            for victim in waiting:
                del waiting[victim]
                if answer:
                    victim.cut_off(
                        "the sidecar is at its connection limit, and this request was the "
                        "slowest to arrive"
                    )
                    self.notice.slow += 1
                    self.notice.seen(self.loop)
                else:
                    victim.transport.close()
                    self.notice.evicted += 1
                return True
        return False

    def cut_off(self, message: str) -> None:
        """Answer 503 and close: the connection makes room for another."""
        if self.transport.is_closing():
            return
        error = Unavailable(message, [Violation("max_connections", "open HTTP connections")])
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(error_bytes(503, "Service Unavailable", error))
        self.transport.close()  # a body still on its way: its request ends as a disconnect

    def _refuse(self) -> None:
        self._refused = True
        self._cancel_head_timer()
        self.connections.discard(self)
        self.notice.refused += 1
        self.notice.seen(self.loop)
        error = Unavailable(
            f"the sidecar has {self.max_connections} connections open, its limit, and none "
            "is idle or slow: try again in a moment",
            [Violation("max_connections", "open HTTP connections limit")],
        )
        head = f"Retry-After: {RETRY_AFTER_S}\r\n".encode()
        self.transport.write(error_bytes(503, "Service Unavailable", error, head))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        for waiting in (self.first, self.idle, self.again):
            waiting.pop(self, None)
        self._gone.cancel()  # whatever its requests still run, nobody will read it
        self._stop_stall_timer()
        super().connection_lost(exc)

    def eof_received(self) -> None:
        if self._refused:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self in self.idle:  # the first byte of its next request
            del self.idle[self]
            self.again[self] = None
        super().data_received(data)

    def on_message_complete(self) -> None:
        self.first.pop(self, None)  # the whole request is in
        self.again.pop(self, None)
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        extensions = self.scope.setdefault("extensions", {})
        extensions[CANCEL_EXTENSION] = self._gone  # type: ignore[assignment]
        if len(self.tasks) < IN_FLIGHT_PER_CONNECTION * self.max_connections:
            super().on_headers_complete()
            return
        # Requests still running for clients that have gone (a write runs to its end) count
        # too: past the limit, this one is answered 503 rather than queued behind them.
        app = self.app
        self.app = _busy
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None and not (
            self in self.first or self in self.again
        ):
            self.idle[self] = None  # waiting for its next request

    # -- a client that stops reading ------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_stall(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._stop_stall_timer()
        super().resume_writing()

    def _watch_stall(self, pending: int) -> None:
        self._stop_stall_timer()
        self._stall_timer = self.loop.call_later(self.stall_timeout_s, self._stalled, pending)

    def _stop_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self, pending: int) -> None:
        self._stall_timer = None
        now = self.transport.get_write_buffer_size()
        if now == 0:
            return
        if now < pending:
            self._watch_stall(now)  # slow, but taking its answer
            return
        self.notice.stalled += 1
        self.notice.seen(self.loop)
        self.transport.abort()


async def _busy(scope: Scope, receive: Receive, send: Send) -> None:
    error = Unavailable(
        "the sidecar is running as many requests as it has connections: try again in a moment",
        [Violation("max_connections", "requests in flight limit")],
    )
    await send_error(send, 503, error, [(b"retry-after", str(RETRY_AFTER_S).encode())])


def server_protocol(
    *, max_connections: int, head_timeout_s: float, stall_timeout_s: float
) -> type[AdmittingProtocol]:
    """The protocol class for one uvicorn server: its own idle set and limits."""
    return type(
        "AdmittingProtocol",
        (AdmittingProtocol,),
        {
            "max_connections": max_connections,
            "head_timeout_s": head_timeout_s,
            "stall_timeout_s": stall_timeout_s,
            "first": {},
            "idle": {},
            "again": {},
            "notice": _Notice(max_connections),
        },
    )


# Open files the server needs besides its connections: the lake's catalog and data files,
# DuckDB's temporary files, logs, the listening socket.
FILES_BESIDES_CONNECTIONS = 256


def raise_open_files(max_connections: int) -> int:
    """Raise this process's open-file limit to its hard limit; warn when even that leaves
    too few for ``max_connections`` connections and the lake's own files. Returns the limit.

    Past the soft limit (often 1024), ``accept()`` fails with EMFILE and asyncio stops taking
    connections for a second at a time, the agents' too, and DuckDB fails to open files.
    Raising the soft limit to the hard one is what a server may do unprivileged (the Go
    runtime does it at start).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    needed = max_connections + FILES_BESIDES_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-file limit is %d, fewer than the %d that %d connections "
            "(LAKEWARDEN_MAX_CONNECTIONS) and the lake's files need: raise it (ulimit -n, "
            "LimitNOFILE) or lower LAKEWARDEN_MAX_CONNECTIONS",
            soft,
            needed,
            max_connections,
        )
    return int(soft)
