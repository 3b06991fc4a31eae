"""DuckLake's own maintenance, as the sidecar runs it: merge small files, expire snapshots past
the restore window, delete the files no snapshot needs any more.

Each step is DuckLake's function, run under the lake's write lock (in this process and across
the fleet), so it never races a governed write. The merge is a snapshot of its own, authored
by lakewarden itself (``MAINTENANCE merge adjacent files``): bookkeeping, which the snapshot
listings leave out like the audit's own commits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import duckdb

from lakewarden.errors import ExecutionError
from lakewarden.store.audit import AUTHOR
from lakewarden.store.engine import LAKE_ALIAS, Engine

__all__ = ["MESSAGE", "MaintenanceRun", "maintain"]

MESSAGE = "MAINTENANCE merge adjacent files"
# Files are deleted only this long after the snapshots that used them expired: a read that
# began on one of them (here or on another sidecar) still finds its files.
CLEANUP_GRACE_S = 300.0


@dataclass(frozen=True)
class MaintenanceRun:
    files_merged: int = 0
    files_written: int = 0
    snapshots_expired: int = 0
    files_deleted: int = 0
    seconds: float = 0.0


def maintain(engine: Engine, keep_snapshots_s: float | None) -> MaintenanceRun:
    """Merge adjacent files of every table; with ``keep_snapshots_s``, expire older snapshots
    and delete the files nothing needs. A plain DuckDB file has nothing to maintain."""
    if not engine.location.is_lake:
        return MaintenanceRun()
    started = time.perf_counter()
    cur = engine.cursor()
    try:
        with engine.write_lock:
            cur.begin()
            try:
                cur.execute(
                    f"CALL {LAKE_ALIAS}.set_commit_message(?, ?)",
                    [AUTHOR, MESSAGE],
                )
                merged = cur.execute(
                    "CALL ducklake_merge_adjacent_files(?)", [LAKE_ALIAS]
                ).fetchall()
                cur.commit()
            except BaseException:
                cur.rollback()
                raise
            expired = deleted = 0
            if keep_snapshots_s is not None:
                expired = len(
                    cur.execute(
                        "CALL ducklake_expire_snapshots(?, older_than => "
                        "now() - to_seconds(?::DOUBLE))",
                        [LAKE_ALIAS, keep_snapshots_s],
                    ).fetchall()
                )
                deleted = len(
                    cur.execute(
                        "CALL ducklake_cleanup_old_files(?, older_than => "
                        "now() - to_seconds(?::DOUBLE))",
                        [LAKE_ALIAS, CLEANUP_GRACE_S],
                    ).fetchall()
                )
    except duckdb.Error as exc:
        raise ExecutionError(f"lake maintenance failed: {exc}") from exc
    finally:
        cur.close()
    return MaintenanceRun(
        files_merged=sum(int(row[2]) for row in merged),
        files_written=sum(int(row[3]) for row in merged),
        snapshots_expired=expired,
        files_deleted=deleted,
        seconds=time.perf_counter() - started,
    )
