"""watch: picking up an outside commit costs what its delta costs, not what the table holds.

The lake has a SQLite catalog (the multi-process setting) and two tables with one schema: 10M
rows and 10k rows. An EXTERNAL writer - a plain DuckDB connection with its own ATTACH of the
same catalog, no lakewarden - commits 1,000 rows into one of them, as ``external-writer``; then
``warden.refresh()`` is timed: what the monitor's poll does, i.e. find the new snapshot, read its
change feed and update the table's signals. The external commit runs before the timed call and
the verification (rows +1,000, last writer, snapshot id) after it, both untimed.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb

import lakewarden
from benchmarks import common
from lakewarden.core.monitor import Monitor
from lakewarden.store import extensions

TARGET = 1.5
COLUMNS = 10
INSERT_ROWS = 1_000
SMALL_ROWS = 10_000
BIG_ROWS, QUICK_BIG_ROWS = 10_000_000, 200_000
REPEATS, QUICK_REPEATS = 40, 5
WRITER = "external-writer"
EXT = "ext"


class ExternalWriter:
    """Another process's view of the lake: plain DuckDB + DuckLake over the SQLite catalog."""

    def __init__(self, lake: Path) -> None:
        self.con = duckdb.connect()
        extensions.load(self.con, "ducklake")
        extensions.load(self.con, "sqlite")
        source = _quote(f"ducklake:sqlite:{lake / 'meta.sqlite'}")
        data = _quote(f"{lake / 'data'}/")
        self.con.execute(f"ATTACH {source} AS {EXT} (DATA_PATH {data})")
        self.insert = common.select_rows(INSERT_ROWS, COLUMNS)
        self.commit_s: dict[str, list[float]] = {}
        self.snapshot_id = 0

    def commit(self, table: str) -> None:
        """One commit of ``INSERT_ROWS`` rows into ``table``, authored by ``WRITER``."""
        start = time.perf_counter()
        try:
            self.con.begin()
            self.con.execute(f"INSERT INTO {EXT}.{table} {self.insert}")
            self.con.execute(f"CALL {EXT}.set_commit_message('{WRITER}', 'load')")
            self.con.commit()
        except duckdb.Error as exc:
            if "database is locked" in str(exc):
                raise RuntimeError(
                    "the external writer cannot commit: something in the warden's process holds "
                    "the SQLite catalog locked (a DuckLake transaction left open on an engine "
                    f"cursor, e.g. a result read with fetchone() and never finished): {exc}"
                ) from exc
            raise
        self.commit_s.setdefault(table, []).append(time.perf_counter() - start)
        row = self.con.execute(f"SELECT id FROM {EXT}.current_snapshot()").fetchone()
        assert row is not None
        self.snapshot_id = int(row[0])

    def close(self) -> None:
        self.con.close()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def run(quick: bool = False) -> list[common.Outcome]:
    big_rows = QUICK_BIG_ROWS if quick else BIG_ROWS
    repeats = QUICK_REPEATS if quick else REPEATS
    settings = lakewarden.Settings(catalog="sqlite")
    with common.temp_lake(settings=settings) as warden:
        common.build_table(warden, "small", SMALL_ROWS, COLUMNS)
        build_s = common.build_table(warden, "big", big_rows, COLUMNS)
        writer = ExternalWriter(warden.engine.location.path)
        monitor = Monitor(warden)
        expected: dict[str, int] = {}
        try:

            def commit(table: str) -> None:
                expected[table] = warden.table(table).rows + INSERT_ROWS
                writer.commit(table)

            def verify(table: str) -> None:
                state = warden.table(table)
                if state.rows != expected[table]:
                    raise RuntimeError(
                        f"{table}: {state.rows} rows after refresh, not {expected[table]}"
                    )
                if state.last_writer != WRITER:
                    raise RuntimeError(f"{table}: last writer {state.last_writer!r}, not {WRITER}")
                if warden.tracker.snapshot_id != writer.snapshot_id:
                    raise RuntimeError(
                        f"refresh stopped at snapshot {warden.tracker.snapshot_id}, "
                        f"the writer made {writer.snapshot_id}"
                    )

            tables = ("small", "big")
            times = common.measure(
                {t: warden.refresh for t in tables},
                repeats=repeats,
                warmup=2,
                setup={t: functools.partial(commit, t) for t in tables},
                check={t: functools.partial(verify, t) for t in tables},
            )
            commit_s = {t: statistics.median(writer.commit_s[t]) for t in tables}
            # Diagnostics: a poll that finds nothing new, and a whole monitor tick (refresh plus
            # every check re-judged at the current time) for one new snapshot.
            idle = common.measure({"idle": warden.refresh}, repeats=repeats, warmup=2)["idle"]
            ticks = common.measure(
                {t: monitor.tick for t in tables},
                repeats=max(3, repeats // 4),
                warmup=1,
                setup={t: functools.partial(commit, t) for t in tables},
                check={t: functools.partial(verify, t) for t in tables},
            )
        finally:
            writer.close()
    return [
        common.Outcome(
            name="watch_refresh",
            baseline=(
                f"warden.refresh() after an external {INSERT_ROWS:,}-row commit into a "
                f"{SMALL_ROWS:,}-row table (SQLite catalog, plain DuckDB writer)"
            ),
            subject=f"the same into a {big_rows:,}-row table ({COLUMNS} cols)",
            baseline_s=times["small"],
            subject_s=times["big"],
            target=TARGET,
            extra={
                "build + profile of the big table": common.fmt_s(build_s),
                "external commit (untimed), small / big": (
                    f"{common.fmt_s(commit_s['small'])} / {common.fmt_s(commit_s['big'])}"
                ),
                "refresh with no new snapshot": common.median_s(idle),
                "monitor tick (refresh + checks), small / big": (
                    f"{common.median_s(ticks['small'])} / {common.median_s(ticks['big'])}"
                    f" (n={len(ticks['big'])})"
                ),
            },
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
