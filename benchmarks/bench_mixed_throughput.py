"""mixed_throughput: 8 REST agents against 8 raw DuckLake threads, the same statement mix.

On a DuckLake lake with one 10,000-row table (10 columns), three kinds of round, each of a fixed
duration, interleaved (the order rotates and flips like every other case):

- lakewarden x8: 8 agents in ANOTHER process (``benchmarks.mixed_agent``), each its own
  keep-alive ``httpx.Client``, against the real uvicorn server running in this process, send
  80% point reads (``SELECT * FROM t WHERE id = ?``) and 20% one-row INSERTs as fast as they
  can;
- raw x8: 8 threads of this process, each its own cursor on the same engine (one DuckDB
  connection with the lake attached), run the same mix on the same table;
- lakewarden x1: one agent, for the single-client insert latency;
- raw x1: one raw thread, the same yardstick applied to the engine alone.

Each kind of round also records the CPU it used: this process's (the server and the raw
threads share it) and the agent process's, per completed statement. On a machine with fewer
cores than clients, the agents' own HTTP client and the processor sharing between 8 busy
statements bound both targets whatever the server does; those figures show by how much.

Each sample is a round's wall time (until the last in-flight statement returned) per completed
statement. ``mixed_throughput`` is raw x8 vs lakewarden x8 (target: lakewarden completes at
least 0.9x the statements per second, i.e. ratio <= 1/0.9); ``mixed_insert_p99`` is the INSERT
p99 of lakewarden x8 vs lakewarden x1 (target <= 3). Every acknowledged INSERT, of either side,
must be in the table and in the tracker's count.

Before every lakewarden round the warden picks up the raw rounds' commits (untimed), as it
would any outside commit; otherwise its next governed write would replay them. The server's
monitor poll is set to an hour for the same reason: a poll landing in a raw round would replay
that round's commits while it runs.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

import lakewarden
from benchmarks import common
from benchmarks.mixed_load import (
    COLUMNS,
    INSERT,
    READ,
    READ_SHARE,
    ROWS,
    TABLE,
    Tally,
    converged,
    run_round,
)
from lakewarden.intake.server import ServerThread

THROUGHPUT_TARGET = 1 / 0.9  # s per statement, lakewarden / raw: >= 0.9x the throughput
TAIL_TARGET = 3.0  # insert p99 under 8 clients <= 3x its single-client p99
CLIENTS = 8
# (rounds of each kind, seconds per round)
ROUNDS, QUICK_ROUNDS = (5, 2.0), (1, 0.7)
SETTLE_S = 0.2  # between rounds: nothing of the last round's work runs into the next


@dataclass(frozen=True)
class PercentileOutcome(common.Outcome):
    """A tail target: the verdict compares the ``q``-th percentiles of all samples pooled,
    and the paired ratio is the median of the per-round percentile ratios."""

    q: float = 99.0
    baseline_rounds: list[list[float]] = field(default_factory=list)
    subject_rounds: list[list[float]] = field(default_factory=list)

    @property
    def baseline_median(self) -> float:
        return common.percentile(self.baseline_s, self.q)

    @property
    def subject_median(self) -> float:
        return common.percentile(self.subject_s, self.q)

    @property
    def paired_ratio(self) -> float:
        pairs = [
            common.percentile(s, self.q) / common.percentile(b, self.q)
            for b, s in zip(self.baseline_rounds, self.subject_rounds, strict=True)
            if b and s
        ]
        return statistics.median(pairs) if pairs else float("nan")


def process_cpu_s(pid: int | None = None) -> float | None:
    """CPU seconds (user + system, all threads) of this process or of ``pid``; None where
    ``/proc`` cannot tell."""
    if pid is None:
        return time.process_time()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Agents:
    """``benchmarks.mixed_agent`` in a child process: one round per call."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.mixed_agent", url, common.BENCH_AGENT, str(CLIENTS)],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def round(self, n: int, seconds: float) -> tuple[float, Tally]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n} {seconds}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("the agent process failed (see its stderr)")
        data = json.loads(answer)
        return float(data["wall"]), Tally.from_json(data)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


class RawThreads:
    """``CLIENTS`` threads of this process, each its own cursor on the warden's engine."""

    def __init__(self, warden: lakewarden.Warden) -> None:
        self.curs = [warden.engine.cursor() for _ in range(CLIENTS)]
        self.rngs = [random.Random(2000 + k) for k in range(CLIENTS)]
        # Ids apart from the agents' ((k + 1) * 10^9 upwards, a few thousand each).
        self.next_id = [(k + 1) * 1_000_000_000 + 500_000_000 for k in range(CLIENTS)]

    def round(self, n: int, seconds: float) -> tuple[float, Tally]:
        return run_round(self._work, n, seconds)

    def _work(self, k: int, tally: Tally, stop: threading.Event) -> None:
        cur, rng = self.curs[k], self.rngs[k]
        while not stop.is_set():
            read = rng.random() < READ_SHARE
            if read:
                key = rng.randrange(ROWS)
            else:
                self.next_id[k] += 1
                key = self.next_id[k]
            start = time.perf_counter()
            try:
                if read:
                    cur.execute(READ, [key]).fetchall()
                else:
                    cur.execute(INSERT, [key, k, f"raw-{k}"])
                ok, detail = True, ""
            except duckdb.Error as exc:
                ok, detail = False, f"{type(exc).__name__}: {str(exc)[:200]}"
            tally.done(read, time.perf_counter() - start, ok, detail, key)

    def close(self) -> None:
        for cur in self.curs:
            cur.close()


def run(quick: bool = False) -> list[common.Outcome]:
    rounds, seconds = QUICK_ROUNDS if quick else ROUNDS
    settings = lakewarden.Settings(poll_interval_s=3600)
    with common.temp_lake(settings=settings) as warden:
        common.build_table(warden, TABLE, ROWS, COLUMNS)
        server = ServerThread(warden, port=0).start()
        agents = Agents(server.url)
        raw = RawThreads(warden)
        tallies: dict[str, list[Tally]] = {
            "lakewarden x8": [],
            "raw x8": [],
            "lakewarden x1": [],
            "raw x1": [],
        }
        walls: dict[str, list[float]] = {name: [] for name in tallies}
        # CPU seconds of each round: (this process, the agent process)
        cpus: dict[str, list[tuple[float, float | None]]] = {name: [] for name in tallies}

        def round_of(name: str, go: Callable[[int, float], tuple[float, Tally]], n: int):
            def one() -> float:
                here, there = process_cpu_s(), process_cpu_s(agents.proc.pid)
                wall, tally = go(n, seconds)
                here_after, there_after = process_cpu_s(), process_cpu_s(agents.proc.pid)
                assert here is not None and here_after is not None
                spent = None if there is None or there_after is None else there_after - there
                cpus[name].append((here_after - here, spent))
                tallies[name].append(tally)
                walls[name].append(wall)
                return wall / max(tally.statements, 1)

            return one

        def settle() -> None:
            time.sleep(SETTLE_S)

        def catch_up() -> None:
            warden.refresh()
            time.sleep(SETTLE_S)

        try:
            per_statement = common.measure(
                {
                    "lakewarden x8": round_of("lakewarden x8", agents.round, CLIENTS),
                    "raw x8": round_of("raw x8", raw.round, CLIENTS),
                    "lakewarden x1": round_of("lakewarden x1", agents.round, 1),
                    "raw x1": round_of("raw x1", raw.round, 1),
                },
                repeats=rounds,
                warmup=1,
                setup={
                    "lakewarden x8": catch_up,
                    "raw x8": settle,
                    "lakewarden x1": catch_up,
                    "raw x1": settle,
                },
                self_timed=frozenset(tallies),
            )
        finally:
            agents.close()
            raw.close()
            server.stop()
        warden.refresh()
        acked = {k for ts in tallies.values() for t in ts for k in t.acked}
        cur = warden.engine.cursor()
        try:
            present = {
                int(r[0])
                for r in cur.execute(f"SELECT id FROM {TABLE} WHERE id >= 1000000000").fetchall()
            }
            in_table = int(cur.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0][0])
        finally:
            cur.close()
        tracked = converged(lambda: warden.table(TABLE).rows, in_table)
    lost = acked - present
    if lost or in_table != ROWS + len(present) or tracked != in_table:
        raise RuntimeError(
            f"{len(lost)} acknowledged INSERTs are not in the table (of {len(acked)}); table "
            f"{in_table} rows, tracker {tracked}, expected {ROWS + len(present)}"
        )
    # The first round of each kind was the warm-up.
    measured = {name: _pooled(ts[1:]) for name, ts in tallies.items()}
    seconds_of = {name: sum(w[1:]) for name, w in walls.items()}
    lw8, raw8, lw1 = measured["lakewarden x8"], measured["raw x8"], measured["lakewarden x1"]
    raw1 = measured["raw x1"]

    def cpu(name: str) -> str:
        """CPU per completed statement of a kind of round, this process and the agents'."""
        done = measured[name].statements or 1
        here = sum(c[0] for c in cpus[name][1:])
        agents_s = [c[1] for c in cpus[name][1:]]
        text = f"{1000 * here / done:.2f} ms here ({here / seconds_of[name]:.2f} cores)"
        if name.startswith("lakewarden") and None not in agents_s:
            there = sum(a for a in agents_s if a is not None)
            share = there / seconds_of[name]
            text += f", {1000 * there / done:.2f} ms in the agents ({share:.2f} cores)"
        return text

    def rate(name: str) -> str:
        t, s = measured[name], seconds_of[name]
        return (
            f"{t.statements / s:.1f} statements/s ({t.reads / s:.1f} reads/s, "
            f"{t.inserts / s:.1f} inserts/s) over {s:.1f} s"
        )

    rate_ratio = _throughput(lw8, seconds_of["lakewarden x8"]) / _throughput(
        raw8, seconds_of["raw x8"]
    )
    errors = {name: sum(len(t.errors) for t in ts) for name, ts in tallies.items()}
    first_error = next((e for ts in tallies.values() for t in ts for e in t.errors), None)
    extra = {
        "lakewarden, 8 agents": rate("lakewarden x8"),
        "raw DuckLake, 8 threads": rate("raw x8"),
        "lakewarden, 1 agent": rate("lakewarden x1"),
        "throughput, lakewarden / raw (target >= 0.9)": f"{rate_ratio:.3f}",
        "lakewarden x8: read / insert": f"read {_tail(lw8.read_s)}; insert {_tail(lw8.insert_s)}",
        "lakewarden x1: read / insert": f"read {_tail(lw1.read_s)}; insert {_tail(lw1.insert_s)}",
        "raw x8: read / insert": f"read {_tail(raw8.read_s)}; insert {_tail(raw8.insert_s)}",
        "raw x1: read / insert": f"read {_tail(raw1.read_s)}; insert {_tail(raw1.insert_s)}",
        # The tail target applied to the engine alone: what 8 statements sharing the cores (and
        # DuckLake's commit retries) do to a raw INSERT's p99, with no lakewarden in the way.
        "raw INSERT p99, 8 threads / 1 thread (the tail target applied to raw DuckLake)": (
            _p99_ratio(raw8.insert_s, raw1.insert_s)
        ),
        "raw read p50, 8 threads / 1 thread (processor sharing)": (
            f"{common.median_s(raw8.read_s)} / {common.median_s(raw1.read_s)}"
        ),
        "CPU per statement, raw x8": cpu("raw x8"),
        "CPU per statement, lakewarden x8": cpu("lakewarden x8"),
        "CPU per statement, raw x1": cpu("raw x1"),
        "CPU per statement, lakewarden x1": cpu("lakewarden x1"),
        # Concurrent DuckLake commits on one table conflict and are retried by DuckLake after
        # a wait (ducklake_retry_wait_ms, 100 ms by default): the raw side's insert tail.
        "raw x8 INSERTs that took >= 100 ms (DuckLake's commit retry wait)": (
            f"{sum(s >= 0.1 for s in raw8.insert_s)} of {len(raw8.insert_s)}"
        ),
        "errors, whole run (lakewarden x8, raw x8, lakewarden x1, raw x1)": (
            ", ".join(str(errors[name]) for name in tallies)
            + (f"; first: {first_error}" if first_error else "")
        ),
        "INSERTs acknowledged / found in the table (both sides, warm-up included)": (
            f"{len(acked)} / {len(acked & present)}; table {in_table} rows, tracker {tracked}"
        ),
    }
    return [
        common.Outcome(
            name="mixed_throughput",
            baseline=(
                f"raw DuckLake, {CLIENTS} threads (own cursors, one connection): "
                f"{READ_SHARE:.0%} point reads / {1 - READ_SHARE:.0%} one-row INSERTs, "
                f"{rounds} rounds of {seconds:g} s; s per completed statement"
            ),
            subject=(
                f"lakewarden, {CLIENTS} REST agents in another process (httpx, keep-alive), "
                "the same mix on the same table, interleaved rounds"
            ),
            baseline_s=per_statement["raw x8"],
            subject_s=per_statement["lakewarden x8"],
            target=THROUGHPUT_TARGET,
            extra=extra,
        ),
        PercentileOutcome(
            name="mixed_insert_p99",
            baseline="p99 of one-row INSERT latency, 1 REST agent (same mix)",
            subject=f"p99 of one-row INSERT latency, {CLIENTS} REST agents",
            baseline_s=lw1.insert_s,
            subject_s=lw8.insert_s,
            target=TAIL_TARGET,
            baseline_rounds=[t.insert_s for t in tallies["lakewarden x1"][1:]],
            subject_rounds=[t.insert_s for t in tallies["lakewarden x8"][1:]],
            extra={
                "insert p50, 8 agents / 1 agent": (
                    f"{common.median_s(lw8.insert_s)} / {common.median_s(lw1.insert_s)}"
                ),
                "paired ratio here": "median of per-round p99 ratios",
            },
        ),
    ]


def _pooled(tallies: Sequence[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        total.add(tally)
    return total


def _p99_ratio(subject: Sequence[float], baseline: Sequence[float]) -> str:
    if not subject or not baseline:
        return "none"
    p99s, p99b = common.percentile(subject, 99), common.percentile(baseline, 99)
    return f"{common.fmt_s(p99s)} / {common.fmt_s(p99b)} = {p99s / p99b:.1f}"


def _throughput(tally: Tally, seconds: float) -> float:
    return tally.statements / seconds if seconds else 0.0


def _tail(samples: Sequence[float]) -> str:
    if not samples:
        return "none"
    return (
        f"p50 {common.median_s(samples)}, p99 {common.fmt_s(common.percentile(samples, 99))} "
        f"(n={len(samples)})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
