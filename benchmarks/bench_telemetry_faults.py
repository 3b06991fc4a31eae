"""telemetry_faults: statement latency with the OTLP collector down, refusing or stalled, against
the same statements with a healthy collector, in one process, interleaved.

Four lakes are open at once, each with its own warden whose OTLP exporters (gRPC, spans and
metrics, the SDK's defaults but a 1 s batch delay and metric interval so exports happen during
the run) point at: a healthy receiver, a port where nothing listens, a receiver that answers
every export UNAVAILABLE, and one that holds every export 30 s. The receivers run in a child
process, so their work does not land on this process's interpreter. Each repetition is one
point read and one single-row INSERT. Target: p50 and p99 within 1.1x of the healthy case.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import lakewarden
from benchmarks import common

TARGET = 1.1
FAULTS = ("down", "refusing", "stalled")
TESTS = Path(__file__).resolve().parent.parent / "tests"
RECEIVERS = """
import sys, time
sys.path.insert(0, sys.argv[1])
from otlp_receiver import OTLPReceiver
receivers = {"healthy": OTLPReceiver(), "refusing": OTLPReceiver(), "stalled": OTLPReceiver()}
receivers["refusing"].behaviour = "refuse"
receivers["stalled"].behaviour = "stall"
for name, r in receivers.items():
    r.start()
    print(name, r.grpc_endpoint, flush=True)
while True:
    time.sleep(3600)
"""


@contextmanager
def receivers() -> Iterator[dict[str, str]]:
    """gRPC endpoints by behaviour, served by a child process; "down" is a port nobody holds."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RECEIVERS, str(TESTS)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        endpoints = dict(proc.stdout.readline().split() for _ in range(3))
        from benchmarks.services import free_port

        endpoints["down"] = f"http://127.0.0.1:{free_port()}"
        yield endpoints
    finally:
        proc.kill()
        proc.wait()


def open_warden(path: Path, endpoint: str) -> lakewarden.Warden:
    # The SDK's exporters read their endpoint from the environment when they are made.
    saved = dict(os.environ)
    os.environ.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_BSP_SCHEDULE_DELAY="1000",
        OTEL_METRIC_EXPORT_INTERVAL="1000",
    )
    try:
        return lakewarden.open(path)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1)) / 1024  # type: ignore[union-attr]


def run(quick: bool = False) -> list[common.Outcome]:
    repeats = 60 if quick else 600
    with ExitStack() as stack, receivers() as endpoints:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lw-telemetry-")))
        cases = ("healthy", *FAULTS)
        wardens = {name: open_warden(tmp / name, endpoints[name]) for name in cases}
        for warden in wardens.values():
            stack.callback(warden.close)
        sessions = {name: stack.enter_context(w.session("bench")) for name, w in wardens.items()}
        for session in sessions.values():
            session.sql("CREATE TABLE t (id BIGINT, v VARCHAR)")
            session.sql("INSERT INTO t SELECT range, 'x' FROM range(1000)")
        counter = iter(range(10**9))

        def step(name: str) -> object:
            session = sessions[name]

            def one() -> object:
                key = next(counter)
                session.sql(f"SELECT * FROM t WHERE id = {key % 1000}")
                return session.sql(f"INSERT INTO t VALUES ({1000 + key}, 'y')")

            return one

        rss_before = rss_mb()
        times = common.measure(
            {name: step(name) for name in cases}, repeats=repeats, warmup=max(10, repeats // 20)
        )
        rss_after = rss_mb()
        losses = {
            name: {s: wardens[name].telemetry.losses[s].total for s in ("spans", "metrics")}
            for name in cases
        }
    outcomes = []
    healthy = times["healthy"]
    for fault in FAULTS:
        p99_ratio = common.percentile(times[fault], 99) / common.percentile(healthy, 99)
        outcomes.append(
            common.Outcome(
                name=f"telemetry_faults[{fault}]",
                baseline="point read + 1-row INSERT, OTLP/gRPC collector healthy",
                subject=f"the same, collector {fault}",
                baseline_s=healthy,
                subject_s=times[fault],
                target=TARGET,
                extra={
                    "p99 healthy / faulty": f"{common.fmt_s(common.percentile(healthy, 99))} / "
                    f"{common.fmt_s(common.percentile(times[fault], 99))} "
                    f"(ratio {p99_ratio:.3f}, target <= {TARGET})",
                    "dropped (spans, metric points)": f"{losses[fault]['spans']}, "
                    f"{losses[fault]['metrics']} (healthy: {losses['healthy']['spans']}, "
                    f"{losses['healthy']['metrics']})",
                    "process RSS before / after the timed run": f"{rss_before:.0f} / "
                    f"{rss_after:.0f} MB (four lakes)",
                },
            )
        )
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, argv, __doc__ or "")


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"took {time.monotonic() - started:.0f} s")
    raise SystemExit(code)
