"""profile_vs_aggregate: lakewarden's full table profile vs one hand-written DuckDB aggregate.

The profile (row count, null count of every column, max event time) plus the schema lookup is
what a re-base costs; it should be no more than the one aggregate query a person would write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks import common
from lakewarden.store import catalog

TARGET = 1.5
TABLE = "wide"
COLUMNS = 20
ROWS, QUICK_ROWS = 10_000_000, 500_000
REPEATS, QUICK_REPEATS = 15, 5


def run(quick: bool = False) -> list[common.Outcome]:
    rows = QUICK_ROWS if quick else ROWS
    names = [name for name, _ in common.columns(COLUMNS)]
    hand_written = (
        f"SELECT count(*), {', '.join(f'count({c})' for c in names)}, max(ts) FROM {TABLE}"
    )
    with common.temp_lake() as warden:
        build_s = common.build_table(warden, TABLE, rows, COLUMNS)
        cur = warden.engine.cursor()
        try:

            def aggregate() -> tuple[Any, ...] | None:
                return cur.execute(hand_written).fetchone()

            def profile() -> catalog.Profile:
                schema = catalog.schemas(cur, warden.engine.database)[TABLE]
                return catalog.profile(cur, TABLE, list(schema), "ts")

            expected, got = aggregate(), profile()
            counts = dict(zip(names, expected[1:-1], strict=True)) if expected else {}
            if (
                expected is None
                or got.rows != rows
                or got.max_event_time != expected[-1]
                or any(got.null_counts[c] != rows - counts[c] for c in names)
            ):
                raise RuntimeError(f"the profile {got} disagrees with the aggregate {expected}")
            times = common.measure(
                {"aggregate": aggregate, "profile": profile},
                repeats=QUICK_REPEATS if quick else REPEATS,
                warmup=2,
            )
        finally:
            cur.close()
    return [
        common.Outcome(
            name="profile_vs_aggregate",
            baseline=f"one hand-written aggregate: count(*), count(c) x{COLUMNS}, max(ts)",
            subject=f"catalog.schemas() + catalog.profile() of a {rows:,}-row x {COLUMNS} table",
            baseline_s=times["aggregate"],
            subject_s=times["profile"],
            target=TARGET,
            extra={"build + first profile": common.fmt_s(build_s)},
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
