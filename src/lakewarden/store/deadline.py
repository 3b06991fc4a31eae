"""Statement time limits: duckdb 1.5.5 has no timeout setting, so a sweeper interrupts cursors.

One background thread checks the running statements a few times a second and interrupts those
past their deadline. Arming a deadline is a dict insert under a lock, with no thread wake-up:
a ``threading.Timer`` per statement, or waking a timer thread each time, costs more than a small
read. The price is precision: a statement is stopped within one tick after its limit.

The same sweeper stops a read whose caller has gone (:class:`Cancel`): an intake that sees its
client disconnect cancels the token it ran the statement under (:func:`cancel_on`).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

TICK_S = 0.05


class Interruptible(Protocol):
    def interrupt(self) -> None: ...


class Cancel:
    """Set when nobody waits for a statement's answer any more (its client disconnected)."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


_CANCEL: ContextVar[Cancel | None] = ContextVar("lakewarden_cancel", default=None)


@contextmanager
def cancel_on(token: Cancel) -> Iterator[None]:
    """Statements run in the block that may be abandoned (reads) are stopped once ``token``
    is cancelled."""
    reset = _CANCEL.set(token)
    try:
        yield
    finally:
        _CANCEL.reset(reset)


@dataclass
class Deadline:
    due: float
    target: Interruptible = field(repr=False)
    expired: bool = False  # set when the sweeper interrupted the statement
    cancel: Cancel | None = field(default=None, repr=False)
    abandoned: bool = False  # set when it was interrupted because its caller had gone


class Watchdog:
    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick = tick_s
        self._active: dict[int, Deadline] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(
        self, target: Interruptible, seconds: float | None, *, abandonable: bool = False
    ) -> Iterator[Deadline]:
        """Interrupt ``target`` if the block is still running after ``seconds``, or, when
        ``abandonable``, once the caller's :class:`Cancel` token is cancelled."""
        timed = seconds is not None and seconds > 0
        cancel = _CANCEL.get() if abandonable else None
        due = time.monotonic() + seconds if timed and seconds is not None else math.inf
        deadline = Deadline(due, target, cancel=cancel)
        if not timed and cancel is None:
            yield deadline
            return
        ident = next(self._ids)
        with self._lock:
            self._active[ident] = deadline
            self._start()
        try:
            yield deadline
        finally:
            with self._lock:
                del self._active[ident]

    def start(self) -> None:
        """Start the sweeper now rather than at the first deadline (a server starts its
        threads before any request: see :func:`lakewarden.intake.server.prestarted`)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._sweep, name="lakewarden-watchdog", daemon=True
            )
            self._thread.start()

    def _sweep(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:
                for deadline in self._active.values():
                    if deadline.expired or deadline.abandoned:
                        continue
                    if deadline.cancel is not None and deadline.cancel.cancelled:
                        deadline.abandoned = True
                        deadline.target.interrupt()
                    elif deadline.due <= now:
                        deadline.expired = True
                        # Under the lock: once guard() has left its block, the cursor is never
                        # interrupted on behalf of a finished statement.
                        deadline.target.interrupt()


WATCHDOG = Watchdog()
