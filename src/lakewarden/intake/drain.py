"""Draining: how the sidecar stops without failing the statements it already took.

On SIGTERM (or SIGINT) the server first drains: ``/readyz`` answers 503, every new request is
refused with 503 ``unavailable`` (``"retryable": true``: the agent sends it again, to another
sidecar or after the restart), and the requests in flight run to their end, for at most the
grace period. Only then does uvicorn stop listening and the warden close (state saved,
telemetry flushed). A second signal stops at once.

uvicorn alone closes the listening socket at the first signal: a new statement then meets a
refused connection, which an agent cannot tell from a sidecar that crashed.
"""

from __future__ import annotations

import json
import threading
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from lakewarden.errors import Unavailable, Violation
from lakewarden.intake.caller import error_body

__all__ = ["EXEMPT_PATHS", "Drain"]

# Probes and scrapes keep working while the sidecar drains: /readyz is how Kubernetes learns
# it is going, /metrics how Prometheus sees the last statements.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Drain:
    """Counts the requests in flight and, once :meth:`start` is called, refuses new ones."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self) -> None:
        with self._lock:
            self.draining = True

    def wait(self, timeout_s: float) -> bool:
        """Until no request is in flight; False if some still are after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def draining(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
                await app(scope, receive, send)
                return
            with self._lock:
                refused = self.draining
                if not refused:
                    self._in_flight += 1
            if refused:
                await _refuse(send)
                return
            try:
                await app(scope, receive, send)
            finally:
                with self._idle:
                    self._in_flight -= 1
                    if not self._in_flight:
                        self._idle.notify_all()

        return draining


_REFUSAL = Unavailable(
    "the sidecar is shutting down and takes no new statements; nothing was run: send it again "
    "(to another sidecar, or once this one is back)",
    [Violation("shutting_down", "the sidecar received a stop signal")],
)


async def _refuse(send: Send) -> None:
    body = json.dumps(error_body(_REFUSAL, None)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
