"""write_path: a governed INSERT against the engine's own floor, on a 100,000-row DuckLake table.

Three ways to write the same rows, interleaved call by call in one run:

- governed: ``session.sql(INSERT ...)`` on a persistent session (default telemetry, signals on);
- raw: the same INSERT on a raw cursor of the same engine, autocommit;
- raw + audit: what a governed write must keep atomic with the data, done by hand on a raw
  cursor: ``BEGIN``, the INSERT, ``CALL lake.set_commit_message(agent, summary, extra_info)``
  with extra info shaped like lakewarden's (trace, commit id and the audit record, as
  ``store/audit.py`` writes it for a commit that changed rows), ``COMMIT``. This is the floor:
  the verdict is governed / (raw + audit), target <= 1.2. (Until the audit record moved into
  the snapshot's extra info, the floor also inserted an audit row: 7-8 ms more per commit.)

For one row (a parameterised ``INSERT ... VALUES``) and for 1,000 rows (``INSERT ... SELECT``
over ``range()``), each into its own 100,000-row table (10 columns). A raw commit is an outside
commit for lakewarden, which the next governed write would replay: ``warden.refresh()`` catches
up before every governed call, outside the timed region.

Afterwards, as diagnostics, a separate pass times the stages of governed writes with
:class:`benchmarks.stage_timer.StageTimer` (analysis, governance, execution, gate, commit,
signals, telemetry) and how long each write holds the engine's write lock.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import lakewarden
from benchmarks import common
from benchmarks.mixed_load import converged
from benchmarks.stage_timer import StageTimer

TARGET = 1.2  # governed <= 1.2x raw + audit in one transaction
RAW_TARGET = 2.0  # ... which is about 2x a raw autocommit INSERT (diagnostic)
ROWS = 100_000
COLUMNS = 10
BULK = 1_000
REPEATS, QUICK_REPEATS = 150, 8
WARMUP, QUICK_WARMUP = 5, 2
BREAKDOWN, QUICK_BREAKDOWN = 60, 6
ONE = "INSERT INTO {table} (id, ts, grp0, name0) VALUES (?, now(), ?, ?)"
COMMIT_MESSAGE = "CALL lake.set_commit_message(?, ?, extra_info => ?)"


class Writer:
    """The three ways of writing into one table, with ids that never repeat."""

    def __init__(self, warden: lakewarden.Warden, table: str, rows: int) -> None:
        self.warden = warden
        self.table = table
        self.rows = rows
        self.session = warden.session(common.BENCH_AGENT)
        self.raw_cur = warden.engine.cursor()
        self.audit_cur = warden.engine.cursor()
        self.next_id = 10_000_000_000
        self.written = 0
        if rows == 1:
            self.sql = ONE.format(table=table)
        else:
            self.sql = f"INSERT INTO {table} {common.select_rows(rows, COLUMNS)}"

    def _params(self) -> list[Any] | None:
        if self.rows != 1:
            return None
        self.next_id += 1
        return [self.next_id, 7, "bench"]

    def governed(self) -> None:
        result = self.session.sql(self.sql, self._params())
        self.written += self.rows
        if result.rows_affected != self.rows:
            raise RuntimeError(f"governed INSERT into {self.table}: {result}")

    def raw(self) -> None:
        self.raw_cur.execute(self.sql, self._params())
        self.written += self.rows

    def raw_audit(self) -> None:
        cur = self.audit_cur
        cur.begin()
        try:
            cur.execute(self.sql, self._params())
            extra = json.dumps(
                {
                    "trace_id": "0" * 32,
                    "span_id": "0" * 16,
                    "commit_id": "0" * 32,
                    "audit": [
                        {
                            "decision": "allowed",
                            "operation": "INSERT",
                            "summary": f"INSERT {self.table}",
                            "statement_hash": "0" * 64,
                            "tables": [self.table],
                            "violations": [],
                        }
                    ],
                }
            )
            cur.execute(COMMIT_MESSAGE, [common.BENCH_AGENT, f"INSERT {self.table}", extra])
            cur.commit()
        except BaseException:
            cur.rollback()
            raise
        self.written += self.rows

    def close(self) -> None:
        self.session.close()
        self.raw_cur.close()
        self.audit_cur.close()


def _breakdown(warden: lakewarden.Warden, writer: Writer, writes: int) -> dict[str, str]:
    """Stage times of ``writes`` governed writes, in a pass of their own (the probes cost a
    little time, which stays out of the verdict)."""
    with StageTimer() as timer:
        timer.wrap_transaction_cursors()
        timer.wrap_cursor(warden.tracker, "_cur")  # the change feed's conversion to Polars
        timer.wrap_lock(warden.engine, "write_lock")
        for _ in range(writes):
            with timer.statement():
                writer.governed()
    return timer.report()


def run(quick: bool = False) -> list[common.Outcome]:
    repeats = QUICK_REPEATS if quick else REPEATS
    warmup = QUICK_WARMUP if quick else WARMUP
    breakdown = QUICK_BREAKDOWN if quick else BREAKDOWN
    with common.temp_lake() as warden:
        common.build_table(warden, "one", ROWS, COLUMNS)
        common.build_table(warden, "bulk", ROWS, COLUMNS)
        warden.refresh()
        writers = {1: Writer(warden, "one", 1), BULK: Writer(warden, "bulk", BULK)}
        try:
            fns: dict[str, Callable[[], object]] = {}
            setup: dict[str, Callable[[], object]] = {}
            for size, w in writers.items():
                fns[f"governed {size}"] = w.governed
                fns[f"raw {size}"] = w.raw
                fns[f"raw+audit {size}"] = w.raw_audit
                # Catch up with the raw commits first, as any outside commit is picked up.
                setup[f"governed {size}"] = warden.refresh
            times = common.measure(fns, repeats=repeats, warmup=warmup, setup=setup)
            warden.refresh()
            for w in writers.values():
                _check_rows(warden, w)
            diagnostics = {size: _breakdown(warden, w, breakdown) for size, w in writers.items()}
            warden.refresh()
            for w in writers.values():
                _check_rows(warden, w)
        finally:
            for w in writers.values():
                w.close()
    outcomes = []
    for size in writers:
        governed, raw, floor = (
            times[f"governed {size}"],
            times[f"raw {size}"],
            times[f"raw+audit {size}"],
        )
        what = (
            "one row (INSERT ... VALUES, bound parameters)"
            if size == 1
            else (f"{size:,} rows (INSERT ... SELECT over range())")
        )
        extra = {
            "raw cursor INSERT, autocommit": _percentiles(raw),
            "raw + commit message with the audit record, one transaction": _percentiles(floor),
            "governed session.sql": _percentiles(governed),
            f"governed / raw (about {RAW_TARGET:g}x when the target is met)": (
                f"{statistics.median(governed) / statistics.median(raw):.2f} "
                f"(paired {_paired(raw, governed):.2f})"
            ),
            "raw + audit / raw (what the audit commit costs)": (
                f"{statistics.median(floor) / statistics.median(raw):.2f}"
            ),
        }
        extra.update(diagnostics[size])
        outcomes.append(
            common.Outcome(
                name=f"write_path[{'1 row' if size == 1 else f'{size:,} rows'}]",
                baseline=(
                    f"raw cursor: BEGIN; INSERT {what}; "
                    "set_commit_message with the audit record; COMMIT, "
                    f"into a {ROWS:,}-row DuckLake table"
                ),
                subject="session.sql() of the same INSERT (persistent session, signals on)",
                baseline_s=floor,
                subject_s=governed,
                target=TARGET,
                extra=extra,
            )
        )
    return outcomes


def _check_rows(warden: lakewarden.Warden, writer: Writer) -> None:
    cur = warden.engine.cursor()
    try:
        row = cur.execute(f"SELECT count(*) FROM {writer.table}").fetchall()[0]
    finally:
        cur.close()
    expected = ROWS + writer.written
    tracked = converged(lambda: warden.table(writer.table).rows, expected)
    if row[0] != expected or tracked != expected:
        raise RuntimeError(
            f"{writer.table}: {row[0]} rows in the table, {tracked} tracked, {expected} written"
        )


def _percentiles(samples: Sequence[float]) -> str:
    return f"p50 {common.median_s(samples)}, p95 {common.fmt_s(common.percentile(samples, 95))}"


def _paired(baseline: Sequence[float], subject: Sequence[float]) -> float:
    return statistics.median(s / b for b, s in zip(baseline, subject, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
