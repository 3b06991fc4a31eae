"""Failures of what the lake is kept on, told apart from failures of a statement.

A statement can fail because it is wrong (an unknown table, a type error) or because the lake's
storage or catalog failed under it: the device holding the data files or the catalog file is
full or was remounted read-only, or the PostgreSQL catalog cannot be reached. The engine
reports both as the same classes of error (an ``IOException``, a ``TransactionException`` that
wraps one), so they are told apart by the operating system's and libpq's own words, which DuckDB
passes on. An agent gets a retryable error that names the place and says what to do, instead of
an ``execution_failed`` that reads as its own mistake.

Measured with duckdb 1.5.5 and DuckLake 1.5.5:

- A data file that does not fit: ``IO Error: Could not write file "<data>/.../ducklake-<uuid>
  .parquet": No space left on device``. The transaction is rolled back and DuckLake removes the
  files it had finished, but not the one the write failed in: left there, that half-written file
  keeps the device full after the write was refused (an 8 MB device stayed full after a 2 MB
  file was cut short). :func:`discard_partial_files` removes it.
- A catalog file that cannot grow: the commit fails with ``Failed to commit DuckLake
  transaction.`` on its first line and ``Could not write file "<lake>/meta.ducklake.wal": No space
  left on device`` on a later one; DuckDB truncates its write-ahead log back, nothing of the
  commit is kept, and later commits work once they fit.
- A read-only remount: the same messages with ``Read-only file system``.
- PostgreSQL down or restarting: ``Unable to connect to Postgres at "...": connection to server
  ... failed: Connection refused`` (or ``the database system is starting up`` / ``shutting
  down``), and for a connection cut mid-statement ``server closed the connection unexpectedly``
  or ``terminating connection due to administrator command``. The extension's connection pool
  drops a dead connection and opens a new one for the next statement, so nothing needs to be
  re-attached once the server is back (measured: the first statement after a restart works).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

from lakewarden.errors import InsufficientStorage, LakewardenError, Unavailable, Violation

log = logging.getLogger(__name__)

# errno texts (strerror) as DuckDB quotes them after the file it could not write.
_NO_SPACE = ("No space left on device", "Disk quota exceeded", "File too large")
_READ_ONLY = ("Read-only file system",)
# libpq's and the PostgreSQL server's words for a connection to the catalog that could not be
# made: nothing reached the server.
_NEVER_CONNECTED = (
    "Unable to connect to Postgres",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
)
# libpq's and the PostgreSQL server's words for a catalog that is not there (any more). A
# connection that broke is named first: when both appear, a request was under way on it.
_CATALOG_GONE = (
    "server closed the connection unexpectedly",
    "terminating connection due to administrator command",
    "no connection to the server",
    "could not receive data from server",
    "could not send data to server",
    "connection to server was lost",
    "SSL SYSCALL error",
    # DuckLake's commit failed and so did its ROLLBACK, with no words from libpq: the
    # connection is gone.
    'Failed to execute query "ROLLBACK"',
    *_NEVER_CONNECTED,
)
CATALOG_UNREACHABLE = "catalog_unreachable"  # the rule of the violation
_FILE = re.compile(
    r"(?:Could not (?:write|open|create|truncate|fsync|sync)[a-z ]*file|"
    r'Cannot open file|Could not write to file) "([^"]+)"',
    re.IGNORECASE,
)
# The files DuckLake writes for a table: write-once, named by a fresh UUID, so a file by that
# name that failed while being written belongs to no snapshot and to no other writer.
_DATA_FILE = re.compile(r"ducklake-[0-9a-f-]{36}(?:-delete)?\.parquet")


def storage_failure(exc: BaseException) -> LakewardenError | None:
    """The retryable error a failure of the lake's storage or catalog stands for; None when
    ``exc`` is not one (the statement itself failed)."""
    text = _text(exc)
    path = _path(text)
    where = f" (writing {path})" if path else ""
    if any(words in text for words in _NO_SPACE):
        detail = next(words for words in _NO_SPACE if words in text)
        return InsufficientStorage(
            f"the lake's storage has no space left{where}: the write was rolled back and "
            "nothing was committed; free space on that device and send it again",
            [Violation("no_space", f"{detail}{where}")],
        )
    if any(words in text for words in _READ_ONLY):
        return Unavailable(
            f"the lake's storage is read-only{where}: the write was rolled back and nothing "
            "was committed; reads still work; send it again once the storage is writable",
            [Violation("read_only_storage", f"Read-only file system{where}")],
        )
    if any(words in text for words in _CATALOG_GONE):
        reason = next(words for words in _CATALOG_GONE if words in text)
        return Unavailable(
            "the lake's PostgreSQL catalog cannot be reached: the statement did not run and "
            "nothing was committed; send it again once the catalog is back",
            [Violation(CATALOG_UNREACHABLE, reason)],
        )
    return None


def answer_lost(error: LakewardenError) -> bool:
    """Whether ``error`` says a connection to the catalog broke while a request was on it (so
    a COMMIT sent on it may have been carried out), not that none could be made."""
    return any(
        v.rule == CATALOG_UNREACHABLE and v.detail not in _NEVER_CONNECTED for v in error.violations
    )


def discard_partial_files(exc: BaseException) -> None:
    """Remove the half-written data file a failed write names (see the module's notes)."""
    for found in _FILE.finditer(_text(exc)):
        path = Path(found.group(1))
        if _DATA_FILE.fullmatch(path.name):
            with contextlib.suppress(OSError):  # gone already, or the device is read-only
                os.remove(path)
                log.warning("removed %s, a data file left half-written by a failed write", path)


def _text(exc: BaseException) -> str:
    """The error and what it wraps: DuckDB puts the cause of a failed commit on a later line."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(str(current))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _path(text: str) -> str | None:
    found = _FILE.search(text)
    return found.group(1) if found else None
