"""A collector that is down, refusing or stalled costs telemetry, never an agent's statement.

Every case runs the SDK's real OTLP exporters against a real receiver (or a port where none
listens). Losses are counted in ``lakewarden_telemetry_dropped_total{lakewarden_signal}``, logged
once per outage, and export resumes by itself when the collector is back. How much latency a
sick collector adds is measured in ``benchmarks/bench_telemetry_faults.py``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lakewarden
from lakewarden.core.warden import Warden

from otlp_receiver import OTLPReceiver, free_ports

PROTOCOLS = [pytest.param("grpc", id="grpc"), pytest.param("http/protobuf", id="http")]
DROPPED = re.compile(r"^lakewarden_telemetry_dropped_total\{([^}]*)\} (\S+)$", re.M)


def dropped(warden: Warden) -> dict[str, float]:
    """``lakewarden_telemetry_dropped_total`` by signal, as ``/metrics`` serves it."""
    text = warden.telemetry.prometheus_text().decode()
    found: dict[str, float] = {}
    for labels, value in DROPPED.findall(text):
        signal = re.search(r'lakewarden_signal="([^"]+)"', labels)
        assert signal is not None, labels
        found[signal.group(1)] = float(value)
    return found


def outage_logs(caplog: pytest.LogCaptureFixture, signal: str) -> tuple[int, int]:
    """(outage started, outage ended) log lines for ``signal``."""
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("lakewarden")]
    started = sum(m.startswith(f"telemetry {signal} are being dropped") for m in messages)
    ended = sum(m.startswith(f"telemetry {signal} reach") for m in messages)
    return started, ended


def sdk_noise(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("opentelemetry") and r.levelno >= logging.WARNING
    ]


def wait_until(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture
def fast_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    grpc_port, http_port = free_ports(2)
    yield grpc_port, http_port


def point_at(monkeypatch: pytest.MonkeyPatch, protocol: str, ports: tuple[int, int]) -> None:
    port = ports[0] if protocol == "grpc" else ports[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)


def run_statements(warden: Warden, count: int, marker: str) -> None:
    with warden.session("etl-agent") as s:
        for i in range(count):
            assert s.sql(f"SELECT {i} AS {marker}").rows == [(i,)]
        s.sql("INSERT INTO t VALUES (1)")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("fault", ["down", "refusing"])
def test_losses_are_counted_logged_once_and_export_resumes(
    lake_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fast_export: None,
    ports: tuple[int, int],
    protocol: str,
    fault: str,
) -> None:
    caplog.set_level(logging.INFO)
    point_at(monkeypatch, protocol, ports)
    receiver = OTLPReceiver(grpc_port=ports[0], http_port=ports[1])
    if fault == "refusing":
        receiver.behaviour = "refuse"
        receiver.start()
    try:
        with lakewarden.open(lake_dir) as warden:
            assert set(dropped(warden)) == {"spans", "metrics"}  # before any loss
            with warden.session("etl-agent") as s:
                s.sql("CREATE TABLE t (a INT)")
            # Three waves of statements during the outage: still one log line for it.
            for wave in range(3):
                run_statements(warden, 10, f"during_{wave}")
                warden.telemetry.flush()
            wait_until(lambda: dropped(warden)["spans"] >= 30 and dropped(warden)["metrics"] > 0)
            assert outage_logs(caplog, "spans") == (1, 0)
            assert outage_logs(caplog, "metrics") == (1, 0)
            assert sdk_noise(caplog) == []  # no line per failed batch

            if fault == "down":
                receiver.start()
            receiver.behaviour = "accept"
            lost = dropped(warden)["spans"]

            def resumed() -> bool:
                run_statements(warden, 1, "after")
                warden.telemetry.flush()
                return any(sp["name"] == "SELECT" for sp in receiver.spans())

            wait_until(resumed, timeout_s=60)
            assert outage_logs(caplog, "spans") == (1, 1)
            wait_until(lambda: outage_logs(caplog, "metrics") == (1, 1))
            # What was recovered is not counted as lost; the counter only grew in the outage.
            warden.telemetry.flush()
            assert dropped(warden)["spans"] - lost < 20
    finally:
        receiver.behaviour = "accept"
        receiver.stop()


def test_a_stalled_collector_holds_neither_statements_nor_shutdown(
    lake_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fast_export: None,
    ports: tuple[int, int],
) -> None:
    point_at(monkeypatch, "http/protobuf", ports)
    # A small export queue, so the test shows it staying bounded: what does not fit is dropped.
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
    with OTLPReceiver(grpc_port=ports[0], http_port=ports[1]) as receiver:
        receiver.behaviour, receiver.stall_s = "stall", 30.0
        warden = lakewarden.open(lake_dir)
        with warden.session("etl-agent") as s:
            s.sql("CREATE TABLE t (a INT)")
        statements = 400
        run_statements(warden, statements, "stalled")
        wait_until(lambda: receiver.attempts > 0)
        closing = time.monotonic()
        warden.telemetry.flush()
        counted = dropped(warden)["spans"]
        warden.close()
        closed_in = time.monotonic() - closing
        receiver.behaviour = "accept"
    # At most the queue and the batches being sent can be waiting; all the rest was dropped.
    assert counted >= statements - 64 - 3 * 16, counted
    assert warden.telemetry.losses["spans"].total >= counted
    # Flush and shutdown each wait at most FLUSH_LIMIT_S for the collector, not 30 s per batch.
    assert closed_in < 20, closed_in
    assert any(
        "queue is full" in r.getMessage() or "being dropped" in r.getMessage()
        for r in caplog.records
    )
    assert sdk_noise(caplog) == []


def test_a_full_export_queue_is_counted(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch, ports: tuple[int, int]
) -> None:
    """The batch processor reports a full queue only through a private hook: this pins it."""
    point_at(monkeypatch, "http/protobuf", ports)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    with OTLPReceiver(grpc_port=ports[0], http_port=ports[1]) as receiver:
        receiver.behaviour, receiver.stall_s = "stall", 10.0
        warden = lakewarden.open(lake_dir)
        recorder = warden.recorder
        with warden.session("a") as s:
            s.sql("SELECT 0")
            recorder.flush()
            wait_until(lambda: receiver.attempts > 0)  # the export thread is now held
            for i in range(20):
                s.sql(f"SELECT {i}")
        recorder.flush()
        # The held batch has not failed yet (5 s): every loss so far is the full queue's.
        assert warden.telemetry.losses["spans"].total >= 20 - 4, warden.telemetry.losses
        receiver.behaviour = "accept"
        warden.close()
