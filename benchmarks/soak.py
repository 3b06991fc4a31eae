"""Soak: a real ``lakewarden serve`` under 8 agents for a long time.

    python -m benchmarks.soak --duration 1800 [--sample 30] [--write benchmarks/RESULTS.md]

Eight agent threads, each with its own HTTP client and bearer token, run a mixed load against
one sidecar on a fresh DuckLake lake: three writers (small and medium INSERTs), three analysts
(aggregates, point reads, recent windows), two careless agents whose writes the quality gate
blocks (NULL ids) and whose statements the policy refuses (DROP, file reads, other tables).
Every response is classified: the refusals and gate blocks the careless agents ask for are
expected, anything else is an error. Every ``--sample`` seconds the sidecar's RSS, threads,
open files, the lake's data files and the latency per kind in that interval are recorded.

At the end: RSS growth from minute 5 (or the first quarter, on a short run) to the end; p50/p99
per kind over time; errors; every acknowledged row is in the table exactly once; data files, and
the latency of a full-table aggregate. Exit status 1 when an unexpected error happened, a row
was lost, or RSS grew more than 5% after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import common
from benchmarks.services import free_port

TABLE = "events"
POLICY = """\
version: 1
mode: enforce
agents:
  admin: {{token_env: LW_SOAK_ADMIN, read: ["*"], write: ["*"], ddl: true}}
  writer: {{token_env: LW_SOAK_WRITER, read: ["events"], write: ["events"]}}
  analyst: {{token_env: LW_SOAK_ANALYST, read: ["events"]}}
  careless: {{token_env: LW_SOAK_CARELESS, read: ["events"], write: ["events"]}}
maintenance: {{every: {every}}}
tables:
  events:
    event_time: ts
    schema: locked
    volume: {{max_delete_ratio: 0.1}}
    columns: {{id: {{type: BIGINT, nullable: false}}, amount: {{max_null_ratio: 0.5}}}}
"""
CREATE = (
    f"CREATE TABLE {TABLE} (id BIGINT, agent VARCHAR, ts TIMESTAMP, amount DOUBLE, note VARCHAR)"
)
WARMUP_S = 300.0  # "flat after warm-up": RSS is compared from minute 5 on
RSS_GROWTH_LIMIT = 0.05


@dataclass
class Window:
    """What one sampling interval saw."""

    at_s: float
    rss_mb: float
    threads: int
    fds: int
    data_files: int
    scan_s: float = 0.0  # a full-table aggregate at the end of the window
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass
class Ledger:
    """Shared by the agent threads; one lock, taken once per statement."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    current: Window | None = None
    acked_ids: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(self, kind: str, seconds: float, outcome: str) -> None:
        with self.lock:
            if self.current is not None:
                self.current.latencies[kind].append(seconds)
                self.current.outcomes[f"{kind}:{outcome}"] += 1


# -- the agents --------------------------------------------------------------------------------


@dataclass
class Step:
    kind: str  # read, write, blocked, refused
    body: dict[str, object]
    expected: int  # HTTP status
    rows: list[int] = field(default_factory=list)  # ids written when acknowledged


def writer_step(rng: random.Random, ids: Callable[[int], list[int]], name: str) -> Step:
    n = rng.choice((1, 1, 3, 5, 20, 50))
    written = ids(n)
    values = ", ".join(
        f"({i}, '{name}', now()::TIMESTAMP, {rng.random() * 100:.2f}, 'soak')" for i in written
    )
    return Step("write", {"sql": f"INSERT INTO {TABLE} VALUES {values}"}, 200, written)


def analyst_step(rng: random.Random, ids: Callable[[int], list[int]], name: str) -> Step:
    sql = rng.choice(
        (
            f"SELECT agent, count(*), sum(amount) FROM {TABLE} GROUP BY agent",
            f"SELECT * FROM {TABLE} WHERE id = {rng.randrange(1, 100_000)}",
            f"SELECT count(*) FROM {TABLE} WHERE ts > now()::TIMESTAMP - INTERVAL 1 MINUTE",
        )
    )
    return Step("read", {"sql": sql}, 200)


CARELESS = (
    (f"DROP TABLE {TABLE}", 403),
    ("SELECT * FROM read_csv('/etc/passwd')", 403),
    ("SELECT * FROM secrets", 403),
    (f"DELETE FROM {TABLE}", 409),
)


def careless_step(rng: random.Random, ids: Callable[[int], list[int]], name: str) -> Step:
    if rng.random() < 0.5:
        values = ", ".join(f"(NULL, '{name}', now()::TIMESTAMP, NULL, 'x')" for _ in range(3))
        return Step("blocked", {"sql": f"INSERT INTO {TABLE} VALUES {values}"}, 409)
    sql, status = rng.choice(CARELESS)
    return Step("refused" if status == 403 else "blocked", {"sql": sql}, status)


ROLES: dict[str, Callable[[random.Random, Callable[[int], list[int]], str], Step]] = {
    "writer": writer_step,
    "analyst": analyst_step,
    "careless": careless_step,
}
FLEET = ["writer"] * 3 + ["analyst"] * 3 + ["careless"] * 2


class IdSource:
    def __init__(self) -> None:
        self._next = 1
        self._lock = threading.Lock()

    def __call__(self, n: int) -> list[int]:
        with self._lock:
            first, self._next = self._next, self._next + n
        return list(range(first, first + n))


def agent(
    url: str,
    token: str,
    role: str,
    index: int,
    ids: IdSource,
    ledger: Ledger,
    stop: threading.Event,
) -> None:
    rng = random.Random(index)
    name = f"{role}-{index}"
    step_of = ROLES[role]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        while not stop.is_set():
            step = step_of(rng, ids, name)
            started = time.perf_counter()
            try:
                response = http.post("/v1/sql", json=step.body)
                status, text = response.status_code, response.text
            except httpx.HTTPError as exc:
                status, text = 0, repr(exc)
            seconds = time.perf_counter() - started
            ok = status == step.expected
            ledger.record(step.kind, seconds, "ok" if ok else f"unexpected {status}")
            if ok and step.rows:
                with ledger.lock:
                    ledger.acked_ids.extend(step.rows)
            elif not ok:
                with ledger.lock:
                    ledger.errors.append(f"{name} {step.body['sql'][:60]!r}: {status} {text[:200]}")
            if role == "analyst":
                time.sleep(0.01)  # analysts think a little; writers and the careless do not


# -- the sidecar -------------------------------------------------------------------------------


def proc_stats(pid: int) -> tuple[float, int, int]:
    """(RSS MB, threads, open file descriptors) of ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    return rss_kb / 1024, threads, len(os.listdir(f"/proc/{pid}/fd"))


def data_files(lake: Path) -> int:
    return sum(1 for p in (lake / "data").rglob("*") if p.is_file())


@dataclass
class Sidecar:
    url: str
    proc: subprocess.Popen[bytes]
    tokens: dict[str, str]
    lake: Path


def start_sidecar(directory: Path, maintenance_every: str) -> Sidecar:
    lake = directory / "lake"
    policy = directory / "policy.yaml"
    policy.write_text(POLICY.format(every=maintenance_every))
    tokens = {role: secrets.token_hex(16) for role in ("admin", "writer", "analyst", "careless")}
    env = dict(os.environ) | {f"LW_SOAK_{r.upper()}": t for r, t in tokens.items()}
    port = free_port()
    log = (directory / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "lakewarden"), "serve", "--lake", str(lake),
         "--policy", str(policy), "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the sidecar did not start: see {directory / 'server.log'}")
        time.sleep(0.1)
    return Sidecar(url, proc, tokens, lake)


def admin_sql(sidecar: Sidecar, sql: str) -> dict[str, object]:
    response = httpx.post(
        f"{sidecar.url}/v1/sql",
        json={"sql": sql},
        headers={"Authorization": f"Bearer {sidecar.tokens['admin']}"},
        timeout=120,
    )
    response.raise_for_status()
    answer: dict[str, object] = response.json()
    return answer


def scan_latency(sidecar: Sidecar, repeats: int = 5) -> float:
    """Median seconds of a full-table aggregate, the read that small files hurt most."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        admin_sql(sidecar, f"SELECT count(*), sum(amount), max(ts) FROM {TABLE}")
        samples.append(time.perf_counter() - started)
    return sorted(samples)[len(samples) // 2]


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Report:
    duration_s: float
    windows: list[Window]
    errors: list[str]
    acked: int
    lost: int
    duplicated: int
    rss_growth: float
    files_end: int
    files_scanned_end: int
    scan_start_s: float
    scan_end_s: float

    @property
    def passed(self) -> bool:
        return (
            not self.errors
            and not self.lost
            and not self.duplicated
            and (self.rss_growth <= RSS_GROWTH_LIMIT)
        )


def rss_growth(windows: Sequence[Window], duration_s: float, start_at: float = WARMUP_S) -> float:
    """Growth of RSS from ``start_at`` (the end of warm-up) to the end of the run."""
    if duration_s < 2 * start_at:
        start_at = duration_s / 4
    after = [w for w in windows if w.at_s >= start_at]
    if len(after) < 2:
        return 0.0
    return after[-1].rss_mb / after[0].rss_mb - 1


def mb_per_1000(windows: Sequence[Window], start_at: float) -> float:
    """RSS growth per 1,000 statements from ``start_at`` on: throughput varies between runs on
    a shared machine, so growth per statement compares them where growth per minute cannot."""
    after = [w for w in windows if w.at_s >= start_at] or list(windows)
    statements = sum(sum(w.outcomes.values()) for w in after[1:])
    if len(after) < 2 or not statements:
        return 0.0
    return (after[-1].rss_mb - after[0].rss_mb) / statements * 1000


def inspect_lake(lake: Path, acked: Sequence[int]) -> tuple[int, int, int]:
    """(acknowledged ids missing, ids present more than once, data files a scan of the table
    reads now), read from the lake opened directly once the sidecar has stopped: the REST
    answer is capped at LAKEWARDEN_MAX_ROWS rows, too few to list every id."""
    import glob

    import duckdb
    import duckdb_extension_ducklake

    extension = glob.glob(
        duckdb_extension_ducklake.__path__[0] + "/extensions/*/ducklake.duckdb_extension"
    )[0]
    con = duckdb.connect()
    try:
        con.execute(f"LOAD '{extension}'")
        con.execute(
            f"ATTACH 'ducklake:{lake}/meta.ducklake' AS lake (DATA_PATH '{lake}/data/', READ_ONLY)"
        )
        con.execute("CREATE TEMP TABLE acked AS SELECT unnest(?::BIGINT[]) AS id", [list(acked)])
        (missing,) = con.execute(
            f"SELECT count(*) FROM acked ANTI JOIN lake.{TABLE} USING (id)"
        ).fetchone() or (0,)
        (twice,) = con.execute(
            f"SELECT count(*) FROM (SELECT id FROM lake.{TABLE} GROUP BY id HAVING count(*) > 1)"
        ).fetchone() or (0,)
        (files,) = con.execute(
            f"SELECT count(*) FROM ducklake_list_files('lake', '{TABLE}')"
        ).fetchone() or (0,)
        return int(missing), int(twice), int(files)
    finally:
        con.close()


def soak(duration_s: float, sample_s: float, directory: Path, maintenance_every: str) -> Report:
    sidecar = start_sidecar(directory, maintenance_every)
    try:
        admin_sql(sidecar, CREATE)
        admin_sql(sidecar, "CREATE TABLE secrets (k VARCHAR)")  # no agent but admin may read it
        admin_sql(sidecar, f"INSERT INTO {TABLE} VALUES (0, 'seed', now()::TIMESTAMP, 1, 'x')")
        scan_start = scan_latency(sidecar)
        ids, ledger, stop = IdSource(), Ledger(), threading.Event()
        ids(1)  # id 0 is the seed row, 1.. are the agents'
        windows: list[Window] = []
        started = time.monotonic()
        ledger.current = Window(0, *proc_stats(sidecar.proc.pid), data_files(sidecar.lake))
        threads = [
            threading.Thread(
                target=agent,
                args=(sidecar.url, sidecar.tokens[role], role, i, ids, ledger, stop),
                daemon=True,
            )
            for i, role in enumerate(FLEET)
        ]
        for thread in threads:
            thread.start()
        while (elapsed := time.monotonic() - started) < duration_s:
            time.sleep(min(sample_s, duration_s - elapsed))
            if sidecar.proc.poll() is not None:
                ledger.errors.append(f"the sidecar exited with {sidecar.proc.returncode}")
                break
            window = Window(
                time.monotonic() - started, *proc_stats(sidecar.proc.pid), data_files(sidecar.lake)
            )
            with ledger.lock:
                finished, ledger.current = ledger.current, window
            assert finished is not None
            finished.at_s, finished.rss_mb = window.at_s, window.rss_mb
            finished.threads, finished.fds = window.threads, window.fds
            finished.data_files = window.data_files
            finished.scan_s = scan_latency(sidecar, repeats=3)
            windows.append(finished)
            print(summary_line(finished), flush=True)
        stop.set()
        for thread in threads:
            thread.join(120)
        scan_end = scan_latency(sidecar)
        sidecar.proc.send_signal(signal.SIGTERM)
        if sidecar.proc.wait(60) != 0:
            ledger.errors.append(f"the sidecar exited with {sidecar.proc.returncode} on SIGTERM")
        missing, twice, files_scanned = inspect_lake(sidecar.lake, ledger.acked_ids)
        report = Report(
            duration_s=duration_s,
            windows=windows,
            errors=ledger.errors,
            acked=len(ledger.acked_ids),
            lost=missing,
            duplicated=twice,
            rss_growth=rss_growth(windows, duration_s),
            files_end=data_files(sidecar.lake),
            files_scanned_end=files_scanned,
            scan_start_s=scan_start,
            scan_end_s=scan_end,
        )
    finally:
        if sidecar.proc.poll() is None:
            sidecar.proc.kill()
            sidecar.proc.wait()
    return report


def pct(samples: list[float], q: float) -> str:
    return common.fmt_s(common.percentile(samples, q)) if samples else "-"


def summary_line(w: Window) -> str:
    kinds = " ".join(
        f"{k} {len(v)} p50 {pct(v, 50)} p99 {pct(v, 99)}" for k, v in sorted(w.latencies.items())
    )
    bad = sum(n for key, n in w.outcomes.items() if "unexpected" in key)
    return (
        f"{w.at_s:7.0f}s rss {w.rss_mb:7.1f} MB threads {w.threads} fds {w.fds} "
        f"files {w.data_files} scan {common.fmt_s(w.scan_s)} | {kinds} | unexpected {bad}"
    )


def markdown(report: Report, command: str) -> str:
    lines = [
        f"Command: `{command}` ({common.today()}, {common.machine()}, load {common.load()})",
        "",
        "| minute | RSS MB | threads | fds | data files | table scan | read p50 / p99 "
        "| write p50 / p99 | blocked p50 / p99 | refused p50 / p99 | unexpected |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    step = max(1, len(report.windows) // 30)
    shown = report.windows[::step]
    if report.windows and shown[-1] is not report.windows[-1]:
        shown.append(report.windows[-1])
    for w in shown:
        cells = [
            f"{pct(w.latencies.get(k, []), 50)} / {pct(w.latencies.get(k, []), 99)}"
            for k in ("read", "write", "blocked", "refused")
        ]
        bad = sum(n for key, n in w.outcomes.items() if "unexpected" in key)
        lines.append(
            f"| {w.at_s / 60:.1f} | {w.rss_mb:.0f} | {w.threads} | {w.fds} | {w.data_files} | "
            f"{common.fmt_s(w.scan_s)} | " + " | ".join(cells) + f" | {bad} |"
        )
    totals: Counter[str] = Counter()
    for w in report.windows:
        totals.update(w.outcomes)
    lines += [
        "",
        f"- statements: {dict(sorted(totals.items()))}",
        f"- RSS growth after warm-up (minute {WARMUP_S / 60:g} to the end): "
        f"{report.rss_growth:+.1%} (limit +{RSS_GROWTH_LIMIT:.0%}), "
        f"{mb_per_1000(report.windows, WARMUP_S):.2f} MB per 1,000 statements; from minute 10: "
        f"{rss_growth(report.windows, report.duration_s, 600):+.1%}, "
        f"{mb_per_1000(report.windows, 600):.2f} MB per 1,000 statements",
        f"- unexpected errors: {len(report.errors)}"
        + (f" (first: {report.errors[0]})" if report.errors else ""),
        f"- acknowledged rows {report.acked}, lost {report.lost}, duplicated {report.duplicated}",
        f"- data files at the end: {report.files_end} on disk, {report.files_scanned_end} read "
        f"by a scan of the table; full-table aggregate "
        f"{common.fmt_s(report.scan_start_s)} at the start, {common.fmt_s(report.scan_end_s)} "
        "at the end",
        f"- verdict: {'PASS' if report.passed else 'FAIL'}",
    ]
    return "\n".join(lines)


START = "<!-- benchmarks.soak: start (generated, do not edit by hand) -->"
END = "<!-- benchmarks.soak: end -->"


def write(path: Path, text: str) -> None:
    content = path.read_text() if path.exists() else ""
    block = f"{START}\n{text}\n{END}"
    if START in content and END in content:
        head, rest = content.split(START, 1)
        content = head + block + rest.split(END, 1)[1]
    else:
        content = content.rstrip("\n") + "\n\n## Soak\n\n" + block + "\n"
    path.write_text(content)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--write", type=Path, help="put the result into this Markdown file")
    parser.add_argument("--json", type=Path, help="also write the raw windows as JSON here")
    parser.add_argument(
        "--maintenance-every", default="10m", help="the policy's maintenance.every (default 10m)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lakewarden-soak-") as tmp:
        report = soak(args.duration, args.sample, Path(tmp), args.maintenance_every)
    text = markdown(report, common.command_line())
    print(text)
    if args.write:
        write(args.write, text)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "at_s": w.at_s,
                        "rss_mb": w.rss_mb,
                        "threads": w.threads,
                        "fds": w.fds,
                        "data_files": w.data_files,
                        "scan_s": w.scan_s,
                        "latencies": w.latencies,
                        "outcomes": w.outcomes,
                    }
                    for w in report.windows
                ]
            )
        )
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
