"""Whether a commit whose answer was lost is in the lake.

A commit to a PostgreSQL catalog is DuckLake's transaction on a server connection. When the
server goes away while the ``COMMIT`` is under way (measured: a fast shutdown during a load of
one-row inserts answered one of them ``Failed to execute query "COMMIT": server closed the
connection unexpectedly``), the client cannot know whether the server made it durable before it
went. Answering "nothing was committed" could be wrong: the agent would send the write again and
it would be in the lake twice. Answering "committed" could lose it.

Each commit carries its own id in its snapshot's extra info (see :mod:`lakewarden.store.audit`),
so the catalog can say which it was once it answers again: the snapshots after the one the
transaction read are searched for that id, on a fresh connection (the extension's pool opens a
new one), until the catalog answers or the statement's time is up. Only when it stays silent
past that is the agent told that the outcome is unknown, with the trace id that finds the
snapshot if there is one.
"""

from __future__ import annotations

import time

import duckdb

from lakewarden.errors import LakewardenError, Unavailable, Violation
from lakewarden.store import catalog, faults
from lakewarden.store.engine import Engine

# How often the catalog is asked again while it does not answer.
_RETRY_S = 0.25
# How long, when statements have no time limit.
DEFAULT_WAIT_S = 30.0


def find(engine: Engine, commit_id: str, after: int, within_s: float) -> int | None:
    """The snapshot id of the commit ``commit_id`` (None: it is not in the lake), asking the
    catalog until it answers or ``within_s`` passes; :class:`Unavailable` with the rule
    ``commit_outcome_unknown`` (not retryable) when it never answered."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            cur = engine.cursor()
            try:
                for snap in catalog.snapshots(cur, since=after):
                    if snap.commit_id == commit_id:
                        return snap.snapshot_id
                return None
            finally:
                cur.close()
        except (duckdb.Error, LakewardenError) as exc:
            unreachable = isinstance(exc, Unavailable) or faults.storage_failure(exc) is not None
            if not unreachable or time.monotonic() + _RETRY_S > deadline:
                raise unknown(within_s) from exc
        time.sleep(_RETRY_S)


def unknown(within_s: float) -> Unavailable:
    error = Unavailable(
        "the lake's PostgreSQL catalog went away while this write was being committed and did "
        f"not answer again within {within_s:g} s: the write may be in the lake or not. Before "
        "sending it again, look for a snapshot with this error's trace_id (GET /v1/snapshots): "
        "if there is one, the write is committed",
        [Violation("commit_outcome_unknown", "the catalog's answer to COMMIT was lost")],
    )
    # Sending it again blindly could commit it twice.
    error.retryable = False
    return error
