"""Running statements on the engine: under the statement's deadline, with DuckDB's errors
mapped to :class:`~lakewarden.errors.LakewardenError` and results bounded as they are fetched."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from lakewarden.errors import (
    Conflict,
    ExecutionError,
    InvalidSQL,
    LakewardenError,
    PolicyDenied,
    StatementTimeout,
    TooLarge,
    Violation,
)
from lakewarden.store import faults
from lakewarden.store.deadline import WATCHDOG
from lakewarden.store.engine import LAKE_ALIAS

_BATCH_ROWS = 100_000
# What an engine failure can surface as: an interrupt that lands while Arrow batches are being
# fetched comes out of pyarrow as an OSError, not as a duckdb error.
ENGINE_ERRORS = (duckdb.Error, OSError, MemoryError, pa.ArrowException)


@contextlib.contextmanager
def guarded(
    cur: duckdb.DuckDBPyConnection,
    budget: float | None,
    limit: float | None,
    *,
    abandonable: bool = False,
) -> Iterator[None]:
    """Interrupt ``cur`` after ``budget`` seconds; engine errors inside become lakewarden's.

    ``limit`` is the statement's whole time limit, the figure a timeout error names.
    ``abandonable``: interrupt it too once its caller has gone (see
    :func:`~lakewarden.store.deadline.cancel_on`); only for statements that change nothing.
    """
    with WATCHDOG.guard(cur, budget, abandonable=abandonable) as deadline:
        try:
            yield
        except ENGINE_ERRORS as exc:
            if deadline.abandoned:
                raise abandoned_error() from exc
            if not deadline.expired and _garbled(exc):
                _raise_if_catalog_gone(cur)
            raise engine_error(exc, deadline.expired, limit) from exc


def read(
    cur: duckdb.DuckDBPyConnection,
    sql: str,
    params: Sequence[Any] | None,
    *,
    max_rows: int | None,
    max_bytes: int,
    budget: float | None,
    limit: float | None,
    contained: bool,
    abandonable: bool = False,
) -> tuple[pa.Table, bool]:
    """Run a read; its rows (at most ``max_rows``) and whether there were more.

    ``contained`` runs it inside a transaction that is always rolled back: for an agent that
    may not write, a statement that got past authorization still cannot commit a change
    (DuckDB has no read-only connection to a database attached read-write, and the catalog
    file cannot be attached a second time read-only in the same process).

    ``abandonable``: stopped once its caller has gone (see :func:`guarded`).
    """
    try:
        with guarded(cur, budget, limit, abandonable=abandonable):
            if contained:
                cur.begin()
            cur.execute(sql, params)
            return _fetch(cur, max_rows, max_bytes)
    finally:
        if contained:
            with contextlib.suppress(duckdb.Error):  # the engine may have aborted it
                cur.rollback()


# Measured with duckdb 1.5.5 and DuckLake 1.5.5 while a PostgreSQL catalog went away under
# load: a streamed result failed with this, the catalog's own error lost on the way, and a
# change feed failed with an internal error ("Attempted to access index 0 within vector of
# size 0"). Neither names the catalog; asking it once more tells whether it is the reason.
_LOST_RESULT = "Attempting to fetch from an unsuccessful query result"


def _garbled(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.InternalException) or _LOST_RESULT in str(exc)


def _raise_if_catalog_gone(cur: duckdb.DuckDBPyConnection) -> None:
    """Raise the catalog's error when it cannot be reached now: then that is why the read
    failed, and the agent is told so (a retryable error) rather than of a lost result."""
    try:
        cur.execute(f"SELECT id FROM {LAKE_ALIAS}.current_snapshot()").fetchall()
    except duckdb.Error as exc:
        fault = faults.storage_failure(exc)
        if fault is not None:
            raise fault from exc
    # Reachable (or no lake at all): the statement failed for a reason of its own.


def _fetch(
    cur: duckdb.DuckDBPyConnection, limit: int | None, max_bytes: int
) -> tuple[pa.Table, bool]:
    """The result, at most ``limit`` rows; :class:`TooLarge` past ``max_bytes`` (0 = no cap).

    Batches are counted as they arrive, so a result over the cap stops being fetched there
    instead of being materialised whole first.
    """
    reader = cur.to_arrow_reader(_BATCH_ROWS if limit is None else min(limit + 1, _BATCH_ROWS))
    batches: list[pa.RecordBatch] = []
    count = size = 0
    over = False
    for batch in reader:
        batches.append(batch)
        count += batch.num_rows
        size += batch.get_total_buffer_size()
        if max_bytes and size > max_bytes:
            over = True
            break
        if limit is not None and count > limit:
            break
    if over or (limit is not None and count > limit):
        # Finish the half-read result: left open it keeps the cursor's transaction (and, with a
        # SQLite catalog, a lock that blocks every other writer) alive.
        reader.close()
        cur.execute("SELECT 1").fetchall()
    if over:
        raise TooLarge(
            f"the result is larger than the limit of {max_bytes} bytes and was not returned: "
            "select fewer rows or columns (max_rows), or aggregate in SQL",
            [Violation("result_size", "result bytes limit", measured=size, limit=max_bytes)],
        )
    table = pa.Table.from_batches(batches, schema=reader.schema)
    if limit is not None and table.num_rows > limit:
        return table.slice(0, limit), True
    return table, False


def abandoned_error() -> ExecutionError:
    return ExecutionError(
        "the client disconnected before the answer, so the read was stopped",
        [Violation("client_disconnected", "the caller went away while the statement ran")],
    )


def engine_error(exc: BaseException, expired: bool, timeout: float | None) -> LakewardenError:
    """The lakewarden error an engine failure stands for."""
    if expired or isinstance(exc, duckdb.InterruptException):
        return StatementTimeout.after(timeout)
    fault = faults.storage_failure(exc)
    if fault is not None:
        # The write is refused either way; a half-written data file must not keep the device
        # full after it (see store/faults.py).
        faults.discard_partial_files(exc)
        return fault
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, duckdb.OutOfMemoryException | MemoryError) or first.startswith(
        "Out of Memory Error"  # the engine's own, passed on through an Arrow stream
    ):
        # The engine's memory limit, or the server's address-space cap, stopped the statement.
        return TooLarge(
            f"the statement needs more memory than the engine may use: {first}; "
            "nothing was committed",
            [Violation("memory_limit", first)],
        )
    if isinstance(exc, duckdb.TransactionException) and "Transaction conflict" in str(exc):
        # DuckLake retries a commit that only raced another; this one changed what the other
        # deleted, updated or altered, so only running the statement again can succeed.
        detail = str(exc).strip().splitlines()[-1]
        return Conflict(
            "another writer committed a conflicting change to the same table first; nothing "
            "was committed: send the statement again",
            [Violation("write_conflict", detail)],
        )
    if isinstance(exc, duckdb.PermissionException):
        return PolicyDenied(
            f"the engine refused file access: {first}", [Violation("engine_hardening", first)]
        )
    if isinstance(exc, duckdb.ParserException):
        return InvalidSQL(f"the statement does not parse: {first}")
    rule = _snake(type(exc).__name__.replace("Exception", "_error"))
    return ExecutionError(f"{first}; nothing was committed", [Violation(rule, first)])


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out.replace("__", "_")
