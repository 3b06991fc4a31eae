"""fleet: governed writes from 1, 2 and 3 sidecars on one lake with a PostgreSQL catalog,
against raw DuckDB processes making the same commits on the same catalog.

A throwaway PostgreSQL cluster (Debian's ``postgresql``, as the tests use) holds the catalog and
a local folder the data files. Three ``lakewarden serve`` processes run throughout. For each
process count N, two kinds of round alternate (the order rotates like every other case):

- raw xN: N plain DuckDB processes (``benchmarks.fleet_writer raw``), each committing one-row
  INSERTs of fresh ids, autocommit, as fast as it can;
- lakewarden xN: N writer processes (``benchmarks.fleet_writer rest``), each sending the same
  INSERTs to its own sidecar (the first N), again on a retryable conflict.

Each sample is a round's seconds per committed row (its longest writer's time over the rows all
committed). The target is the write-path one of the single-process case: a governed commit
costs at most 2x a raw autocommit INSERT, here at every process count. A sidecar starting on
the lake afterwards is timed too, against how many snapshots it has to replay.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import httpx

import lakewarden
from benchmarks import bench_mcp, common
from benchmarks.services import postgres_server
from lakewarden.store import extensions

COUNTS = (1, 2, 3)
TARGET = 2.0  # s per commit, governed / raw
ROUNDS, QUICK_ROUNDS = (3, 4.0), (1, 1.5)  # (rounds of each kind, seconds per round)
CATCH_UP = (0, 100, 400)  # snapshots committed by others after the sidecars saved their state
ROOT = Path(__file__).resolve().parents[1]


class Round:
    """Writers started, made ready, let go together, and their answers added up."""

    def __init__(self, argvs: Sequence[list[str]]) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.fleet_writer", *argv],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for argv in argvs
        ]

    def run(self) -> dict[str, object]:
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a fleet writer failed to start (see its stderr)")
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        answers = []
        for proc in self.procs:
            out, _ = proc.communicate(timeout=300)
            answers.append(json.loads(out.strip().splitlines()[-1]))
        return {
            "commits": sum(a["commits"] for a in answers),
            "retries": sum(a["retries"] for a in answers),
            "errors": [e for a in answers for e in a["errors"]],
            "seconds": max(a["seconds"] for a in answers),
            "latencies": [x for a in answers for x in a["latencies"]],
        }


def run(quick: bool = False) -> list[common.Outcome]:
    rounds, seconds = QUICK_ROUNDS if quick else ROUNDS
    with postgres_server() as pg, tempfile.TemporaryDirectory() as tmp:
        os.environ["PGPASSWORD"] = pg.password
        db = pg.new_database()
        dsn = pg.dsn(db)
        lake, data = f"postgres:{dsn}", str(Path(tmp) / "data")
        setup = lakewarden.open(lake, data_path=data)
        with setup.session(agent="admin") as s:
            s.sql("CREATE TABLE t (id BIGINT, who VARCHAR)")
        setup.close()
        specs = [
            bench_mcp.lakewarden_spec(f"sidecar-{k}", ["--lake", lake, "--data-path", data])
            for k in range(max(COUNTS))
        ]
        next_id = [1]
        outcomes = []
        with bench_mcp.servers(specs, Path(tmp)) as urls:
            for n in COUNTS:
                outcomes.append(
                    _case(n, list(urls.values())[:n], dsn, data, rounds, seconds, next_id)
                )
        outcomes[-1].extra.update(_catch_up(lake, dsn, data, next_id))
    return outcomes


def _case(
    n: int,
    urls: list[str],
    dsn: str,
    data: str,
    rounds: int,
    seconds: float,
    next_id: list[int],
) -> common.Outcome:
    tallies: dict[str, list[dict[str, object]]] = {"raw": [], "lakewarden": []}

    def ids() -> int:
        next_id[0] += 10_000_000
        return next_id[0]

    def one(kind: str) -> float:
        if kind == "raw":
            argvs = [["raw", dsn, data, str(seconds), str(ids())] for _ in range(n)]
        else:
            argvs = [["rest", url, str(seconds), str(ids())] for url in urls]
        tally = Round(argvs).run()
        tallies[kind].append(tally)
        return float(tally["seconds"]) / max(int(tally["commits"]), 1)  # type: ignore[call-overload]

    def caught_up() -> None:
        """Untimed: every sidecar has applied the raw rounds' commits (at its next poll), as
        it would any outside writer's; otherwise its first write would replay them."""
        expected = _rows(dsn, data)
        deadline = time.monotonic() + 30
        for url in urls:
            while _gauge(url) != expected and time.monotonic() < deadline:
                time.sleep(0.2)

    per_commit = common.measure(
        {"raw": lambda: one("raw"), "lakewarden": lambda: one("lakewarden")},
        repeats=rounds,
        warmup=1,
        setup={"lakewarden": caught_up},
        self_timed=frozenset({"raw", "lakewarden"}),
    )
    extra = {}
    for kind, label in (("raw", f"raw DuckDB x{n}"), ("lakewarden", f"lakewarden x{n}")):
        measured = tallies[kind][1:]
        commits = sum(int(t["commits"]) for t in measured)  # type: ignore[call-overload]
        wall = sum(float(t["seconds"]) for t in measured)  # type: ignore[arg-type]
        lat = [x for t in measured for x in t["latencies"]]  # type: ignore[attr-defined]
        errors = [e for t in tallies[kind] for e in t["errors"]]  # type: ignore[attr-defined]
        retries = sum(int(t["retries"]) for t in measured)  # type: ignore[call-overload]
        extra[label] = (
            f"{commits / wall:.1f} commits/s; latency p50 {common.median_s(lat)}, "
            f"p99 {common.fmt_s(common.percentile(lat, 99))}; retried conflicts {retries} "
            f"({retries / max(commits, 1):.1%} of commits); errors {len(errors)}"
            + (f", first: {errors[0][:160]}" if errors else "")
        )
    return common.Outcome(
        name=f"fleet[{n} process{'es' if n > 1 else ''}]",
        baseline=(
            f"{n} raw DuckDB process(es), one-row INSERTs autocommit on the PostgreSQL-catalog "
            f"lake, {rounds} rounds of {seconds:g} s; s per committed row"
        ),
        subject=f"{n} sidecar(s), one REST writer process each, the same INSERTs",
        baseline_s=per_commit["raw"],
        subject_s=per_commit["lakewarden"],
        target=TARGET,
        extra=extra,
    )


def _attach(dsn: str, data: str) -> duckdb.DuckDBPyConnection:
    """A raw DuckDB connection to the lake (no lakewarden)."""
    con = duckdb.connect(":memory:")
    extensions.load(con, "ducklake")
    extensions.load(con, "postgres")
    con.execute(f"ATTACH 'ducklake:postgres:{dsn}' AS lake (DATA_PATH '{data}/')")
    return con


def _rows(dsn: str, data: str) -> int:
    con = _attach(dsn, data)
    try:
        return int(con.execute("SELECT count(*) FROM lake.t").fetchall()[0][0])
    finally:
        con.close()


def _gauge(url: str) -> float | None:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("lakewarden_table_rows{") and 'db_collection_name="t"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def _catch_up(lake: str, dsn: str, data: str, next_id: list[int]) -> dict[str, str]:
    """Seconds for a new sidecar to open the lake when others committed k snapshots after the
    shared state was last saved (it replays those k, and profiles nothing)."""
    out = {}
    con = _attach(dsn, data)
    try:
        for k in CATCH_UP:
            for _ in range(k):
                next_id[0] += 1
                con.execute("INSERT INTO lake.t VALUES (?, 'other')", [next_id[0]])
            times = []
            for _ in range(3):
                started = time.perf_counter()
                warden = lakewarden.open(lake, data_path=data)
                warden.refresh()
                times.append(time.perf_counter() - started)
                warden.close()  # saves the state: the next open replays nothing
            snapshots = con.execute("SELECT count(*) FROM lake.snapshots()").fetchall()[0][0]
            out[f"new sidecar, {k} snapshots to replay (lake: {snapshots})"] = (
                f"first open {common.fmt_s(times[0])}; "
                f"again, nothing to replay {common.fmt_s(statistics.median(times[1:]))}"
            )
    finally:
        con.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
