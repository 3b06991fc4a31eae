"""Statement time limits: duckdb 1.5.5 has no timeout setting, so a timer interrupts the cursor.

One watchdog thread serves every statement; arming it is a heap push, which keeps the cost off
the hot path (a ``threading.Timer`` per statement would start a thread each time).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol


class Interruptible(Protocol):
    def interrupt(self) -> None: ...


@dataclass(order=True)
class Deadline:
    due: float
    ident: int
    target: Interruptible = field(compare=False)
    active: bool = field(default=True, compare=False)
    expired: bool = field(default=False, compare=False)  # set when the watchdog interrupted


class Watchdog:
    def __init__(self) -> None:
        self._heap: list[Deadline] = []
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, target: Interruptible, seconds: float | None) -> Iterator[Deadline]:
        """Interrupt ``target`` if the block is still running after ``seconds``."""
        deadline = Deadline(time.monotonic() + (seconds or 0), next(self._ids), target)
        if seconds is None or seconds <= 0:
            deadline.active = False
            yield deadline
            return
        with self._cond:
            heapq.heappush(self._heap, deadline)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="lakewarden-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        try:
            yield deadline
        finally:
            with self._cond:
                deadline.active = False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline = self._heap[0]
                if not deadline.active:
                    heapq.heappop(self._heap)
                    continue
                wait = deadline.due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                deadline.active = False
                deadline.expired = True
                # Under the lock: once guard() has left its block, the cursor is never hit.
                deadline.target.interrupt()


WATCHDOG = Watchdog()
