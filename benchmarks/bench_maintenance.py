"""maintenance: what small files cost a table scan, and what the merge that removes them costs.

    python -m benchmarks.bench_maintenance [--files 1000] [--rows 20]

One governed lake, one table written by ``--files`` commits of ``--rows`` rows each (more rows
than DuckLake inlines, so each commit leaves a data file, as agents' small writes do). A
full-table aggregate is timed through the session before and after ``Warden.maintain()``, and
the merge itself is timed. Reported as the scan's ratio before/after (same process, same data)
and the merge's seconds per thousand files.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import lakewarden
from benchmarks import common

SCAN = "SELECT count(*), sum(v), max(id) FROM t"


def scan_times(session: lakewarden.Session, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.sql(SCAN)
        times.append(time.perf_counter() - started)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    print(f"machine: {common.machine()}; load before: {common.load()}", flush=True)
    insert = "INSERT INTO t SELECT range + ?, random() FROM range(?)"
    with (
        tempfile.TemporaryDirectory(prefix="lw-maintenance-") as tmp,
        lakewarden.open(Path(tmp) / "lake") as warden,
        warden.session("bench") as s,
    ):
        s.sql("CREATE TABLE t (id BIGINT, v DOUBLE)")
        for i in range(args.files):
            s.sql(insert, [i * args.rows, args.rows])
        before = scan_times(s, args.repeats)
        run = warden.maintain()
        after = scan_times(s, args.repeats)
    ratio = statistics.median(before) / statistics.median(after)
    print(f"command: {common.command_line()} ({common.today()}, load {common.load()})")
    print(
        f"scan of {args.files * args.rows:,} rows: {common.median_s(before)} over "
        f"{args.files} files, {common.median_s(after)} over {run.files_written} "
        f"(x{ratio:.1f}); merge of {run.files_merged} files: {common.fmt_s(run.seconds)} "
        f"({common.fmt_s(run.seconds / max(run.files_merged, 1) * 1000)} per 1,000 files)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
