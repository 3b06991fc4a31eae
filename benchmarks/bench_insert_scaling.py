"""insert_scaling: a governed 1,000-row INSERT into a 10M-row table vs into a 10k-row table.

Signals are computed on each write's delta (DuckLake's change feed of its own snapshot), so the
governed write path should cost the same whatever the table size. Both tables share a schema and
a lake. The same inserts on a raw cursor are timed afterwards as a diagnostic, to tell DuckLake's
own scaling (and its share of the cost) apart from lakewarden's.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from benchmarks import common

TARGET = 1.5
COLUMNS = 10
INSERT_ROWS = 1_000
SMALL_ROWS = 10_000
BIG_ROWS, QUICK_BIG_ROWS = 10_000_000, 200_000
REPEATS, QUICK_REPEATS = 25, 5


def run(quick: bool = False) -> list[common.Outcome]:
    big_rows = QUICK_BIG_ROWS if quick else BIG_ROWS
    repeats = QUICK_REPEATS if quick else REPEATS
    insert = common.select_rows(INSERT_ROWS, COLUMNS)
    with common.temp_lake() as warden:
        common.build_table(warden, "small", SMALL_ROWS, COLUMNS)
        build_s = common.build_table(warden, "big", big_rows, COLUMNS)
        session = warden.session(common.BENCH_AGENT)
        cur = warden.engine.cursor()
        try:

            def governed(table: str) -> None:
                result = session.sql(f"INSERT INTO {table} {insert}")
                if result.signals[table].rows_inserted != INSERT_ROWS:
                    raise RuntimeError(f"no signals for the insert into {table}: {result}")

            def raw(table: str) -> None:
                cur.execute(f"INSERT INTO {table} {insert}")

            times = common.measure(
                {"small": lambda: governed("small"), "big": lambda: governed("big")},
                repeats=repeats,
                warmup=2,
            )
            # A separate phase: a raw commit would make the next governed write replay it.
            raw_times = common.measure(
                {"small": lambda: raw("small"), "big": lambda: raw("big")},
                repeats=repeats,
                warmup=0,
            )
            warden.refresh()  # the tracker picks the raw commits up, as it would any outside one
            inserted = INSERT_ROWS * (2 * repeats + 2)
            if warden.table("big").rows != big_rows + inserted:
                raise RuntimeError("the tracker lost count of the big table's rows")
        finally:
            session.close()
            cur.close()
    raw_ratio = statistics.median(raw_times["big"]) / statistics.median(raw_times["small"])
    return [
        common.Outcome(
            name="insert_scaling",
            baseline=f"session.sql(INSERT {INSERT_ROWS:,} rows) into a {SMALL_ROWS:,}-row table",
            subject=f"the same INSERT into a {big_rows:,}-row table ({COLUMNS} cols, signals on)",
            baseline_s=times["small"],
            subject_s=times["big"],
            target=TARGET,
            extra={
                "build + profile of the big table": common.fmt_s(build_s),
                "raw cursor INSERT, small / big": (
                    f"{common.median_s(raw_times['small'])} / {common.median_s(raw_times['big'])}"
                    f" (ratio {raw_ratio:.3f})"
                ),
            },
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
