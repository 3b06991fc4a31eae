"""The lake's write lock: one writer at a time, in this process and across the fleet.

On a catalog that several sidecars share (PostgreSQL), DuckLake lets two inserts into the same
table commit side by side: each transaction read the table without the other's rows, so a
quality gate that judged each alone could pass both while their sum breaks a contract (two
writes each just under a null-ratio limit). The lock therefore also covers the fleet: a
PostgreSQL advisory lock on the catalog database, taken before the transaction begins and held
until it commits, so every gated write starts on a lake that holds every earlier commit and is
judged on it. It is PostgreSQL's own lock, not a coordinator of lakewarden's: a sidecar that
dies drops its connection, and with it the lock.

The advisory lock is transaction-scoped (``pg_advisory_xact_lock``) on a connection of its own
(a DuckDB cursor with the catalog database attached through the postgres extension, whose
transaction pins one PostgreSQL connection), so it cannot outlive the write that took it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from types import TracebackType

import duckdb

from lakewarden.errors import Conflict, ExecutionError, Violation
from lakewarden.store import faults

log = logging.getLogger(__name__)

# One key for the lake (advisory locks are per database): "lakewarden" as a 64-bit number.
LOCK_KEY = int.from_bytes(b"lakewrdn", "big") & 0x7FFF_FFFF_FFFF_FFFF
# Another, for lakewarden's shared state (its tables made, its saves one at a time).
STATE_LOCK_KEY = int.from_bytes(b"lwstate!", "big") & 0x7FFF_FFFF_FFFF_FFFF


class WriteLock:
    """Re-entrant in this process, like the ``threading.RLock`` it wraps; the fleet lock is
    taken by the outermost acquire and dropped by the matching release."""

    def __init__(
        self, fleet: duckdb.DuckDBPyConnection | None = None, alias: str = "", wait_s: float = 0
    ) -> None:
        self._local = threading.RLock()
        self._fleet = fleet
        self._alias = alias
        self._wait_ms = int(wait_s * 1000)
        self._depth = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Like ``RLock.acquire``; ``timeout`` bounds the wait for this process's writers (the
        fleet's lock has its own bound, ``wait_s``)."""
        if not self._local.acquire(blocking, timeout):
            return False
        self._depth += 1
        if self._depth == 1 and self._fleet is not None:
            try:
                self._lock_fleet(self._fleet)
            except BaseException:
                self._depth -= 1
                self._local.release()
                raise
        return True

    def release(self) -> None:
        try:
            if self._depth == 1 and self._fleet is not None:
                _end(self._fleet)
        finally:
            self._depth -= 1
            self._local.release()

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _lock_fleet(self, cur: duckdb.DuckDBPyConnection) -> None:
        # A bounded wait: a writer stuck elsewhere in the fleet costs this agent a retryable
        # error, not a request that hangs (0 = wait as long as it takes).
        sql = f"SET LOCAL lock_timeout = {self._wait_ms}; SELECT pg_advisory_xact_lock({LOCK_KEY})"
        cur.begin()
        try:
            cur.execute("CALL postgres_execute(?, ?)", [self._alias, sql])
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):  # its connection may be gone
                cur.rollback()
            if "lock timeout" in str(exc):
                raise Conflict(
                    f"another sidecar held the lake's write lock for more than "
                    f"{self._wait_ms / 1000:g} s; nothing was committed: send the statement again",
                    [Violation("write_lock_timeout", "waited for the fleet's write lock")],
                ) from exc
            fault = faults.storage_failure(exc)
            if fault is not None:
                raise fault from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExecutionError(
                f"cannot take the lake's write lock in its PostgreSQL catalog ({first}); "
                "nothing was committed",
                [Violation("write_lock", first)],
            ) from exc


def _end(cur: duckdb.DuckDBPyConnection) -> None:
    """End the PostgreSQL transaction that holds the fleet's lock: the lock goes with it."""
    try:
        cur.commit()
    except duckdb.Error as exc:
        # The connection that held the lock is gone (the server restarted or cut it), and
        # PostgreSQL dropped the lock with its session. The write under it has its own answer;
        # failing it here too would turn a committed write into an error.
        with contextlib.suppress(duckdb.Error):
            cur.rollback()
        log.warning("the fleet's write lock ended with its connection: %s", _first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
