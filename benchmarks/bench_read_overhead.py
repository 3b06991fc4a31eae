"""read_overhead: a governed ``Session.sql`` read vs the same read on a raw cursor of the lake.

Both sides run the same GROUP BY through the same fetch path (``execute().to_arrow_table()``);
the difference is lakewarden's per-statement work: analysis (cached), policy, watchdog, span,
metrics. Two cases:

- ``ducklake``: the embedded default. Every DuckLake read first queries its metadata catalog,
  which puts a floor of several milliseconds under any read (measured: ~5 ms for a count over
  1,000 rows on the 2-core bench machine), so a ~1 ms read does not exist here.
- ``duckdb-file``: the same read on a plain DuckDB file lake, sized so the raw read takes ~1 ms.
  This is the case where a fixed per-statement cost shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from opentelemetry import trace

import lakewarden
from benchmarks import common

TARGET = 1.15
QUERY = (
    "SELECT grp0, count(*) AS n, sum(amount0) AS amount, avg(score0) AS score "
    "FROM reads GROUP BY grp0"
)
# (case, lake kind, rows, repeats, quick repeats)
CASES = (
    ("ducklake", "ducklake", 100_000, 300, 30),
    ("duckdb-file", "file", 20_000, 1000, 100),
)


def run_case(case: str, kind: str, rows: int, repeats: int) -> common.Outcome:
    with common.temp_lake(kind) as warden:
        common.build_table(warden, "reads", rows, 10)
        cur = warden.engine.cursor()
        session = warden.session(common.BENCH_AGENT)
        try:

            def raw() -> pa.Table:
                return cur.execute(QUERY).to_arrow_table()

            def governed() -> lakewarden.Result:
                return session.sql(QUERY)

            tracer, no_spans = warden.telemetry.tracer, trace.NoOpTracer()

            def governed_no_spans() -> lakewarden.Result:
                # Diagnostic only: how much of the added time is the statement's span.
                warden.telemetry.tracer = no_spans
                try:
                    return session.sql(QUERY)
                finally:
                    warden.telemetry.tracer = tracer

            if governed().row_count != raw().num_rows:
                raise RuntimeError("governed and raw reads disagree")
            times = common.measure(
                {"raw": raw, "governed": governed, "no spans": governed_no_spans},
                repeats=repeats,
                warmup=max(20, repeats // 10),
            )
        finally:
            session.close()
            cur.close()
    return common.Outcome(
        name=f"read_overhead[{case}]",
        baseline=f"raw cursor execute().to_arrow_table(), GROUP BY over {rows:,} rows",
        subject="session.sql() of the same statement (default telemetry, warm analysis cache)",
        baseline_s=times["raw"],
        subject_s=times["governed"],
        target=TARGET,
        extra={"governed with a no-op tracer (no span)": common.median_s(times["no spans"])},
    )


def run(quick: bool = False) -> list[common.Outcome]:
    return [
        run_case(case, kind, rows, quick_repeats if quick else repeats)
        for case, kind, rows, repeats, quick_repeats in CASES
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
