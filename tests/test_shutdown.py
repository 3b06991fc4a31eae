"""SIGTERM: in-flight statements finish, telemetry is flushed, the process exits cleanly."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from otlp_receiver import OTLPReceiver
from server_helpers import free_port, serve_process

SLOW = "SELECT count(*) FROM range(400000000) t(i) WHERE i % 7 = 3"


def flushed(receiver: OTLPReceiver) -> dict[str, str]:
    """A server's environment that exports to ``receiver`` only what shutdown flushes."""
    return {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # nothing leaves before shutdown flushes it
    }


def test_sigterm_finishes_in_flight_work_and_flushes_telemetry(lake_dir: Path) -> None:
    port = free_port()
    with OTLPReceiver() as receiver:
        proc = serve_process(["--lake", str(lake_dir), "--port", str(port)], flushed(receiver))
        url = f"http://127.0.0.1:{port}"
        try:
            outcome: dict[str, httpx.Response] = {}

            def slow() -> None:
                outcome["slow"] = httpx.post(f"{url}/v1/sql", json={"sql": SLOW}, timeout=60)

            worker = threading.Thread(target=slow)
            worker.start()
            time.sleep(1.0)  # the statement is running (received by the server)
            proc.send_signal(signal.SIGTERM)
            worker.join(timeout=60)
            assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
        assert outcome["slow"].status_code == 200, outcome["slow"].text
        body = outcome["slow"].json()
        receiver.wait_for(lambda r: any(s["trace_id"] == body["trace_id"] for s in r.spans()))


def test_sigterm_under_load_drains_refuses_new_statements_and_loses_nothing(
    lake_dir: Path,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    acked: list[tuple[int, str]] = []  # (id, trace id) of every acknowledged INSERT
    seen: list[tuple[float, int, dict]] = []  # (time, status, body) of every answer
    transport_errors: list[float] = []
    stop = threading.Event()
    lock = threading.Lock()

    def agent(n: int) -> None:
        i = 0
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                key = n * 1_000_000 + i
                i += 1
                sql = f"INSERT INTO t VALUES ({key})" if i % 2 else "SELECT count(*) FROM t"
                try:
                    response = http.post("/v1/sql", json={"sql": sql})
                except httpx.TransportError:
                    with lock:
                        transport_errors.append(time.monotonic())
                    time.sleep(0.05)
                    continue
                body = response.json()
                with lock:
                    seen.append((time.monotonic(), response.status_code, body))
                    if response.status_code == 200 and sql.startswith("INSERT"):
                        acked.append((key, body["trace_id"]))

    with OTLPReceiver() as receiver:
        proc = serve_process(["--lake", str(lake_dir), "--port", str(port)], flushed(receiver))
        try:
            httpx.post(
                f"{url}/v1/sql", json={"sql": "CREATE TABLE t (id BIGINT)"}
            ).raise_for_status()
            slow: dict[str, httpx.Response] = {}
            slow_thread = threading.Thread(
                target=lambda: slow.update(
                    r=httpx.post(f"{url}/v1/sql", json={"sql": SLOW}, timeout=60)
                )
            )
            agents = [threading.Thread(target=agent, args=(n,)) for n in range(8)]
            for thread in agents:
                thread.start()
            time.sleep(1.5)
            slow_thread.start()
            time.sleep(1.0)  # the slow statement is running (received by the server)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
            exited = time.monotonic()
            stop.set()
            for thread in [*agents, slow_thread]:
                thread.join(timeout=60)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
        # Every statement in flight at the signal finished; the ones after it were refused.
        assert slow["r"].status_code == 200, slow["r"].text
        after = [(status, body) for t, status, body in seen if t > signalled]
        refused = [body for status, body in after if status == 503]
        assert refused, "no statement was refused while the sidecar drained"
        for body in refused:
            assert body["error"]["code"] == "unavailable" and body["error"]["retryable"] is True
        assert {status for _, status, _ in seen} <= {200, 503}, [
            (s, b) for _, s, b in seen if s not in (200, 503)
        ]
        assert exited - signalled < 10 + 15  # the grace period, then the warden's close
        # Every acknowledged statement's span reached the collector before the exit.
        traces = {s["trace_id"] for s in receiver.spans()}
        assert {trace for _, trace in acked} <= traces

    # Every acknowledged write is in the lake exactly once, each with its audit record.
    import lakewarden

    with lakewarden.open(lake_dir) as warden, warden.session("check") as s:
        rows = s.sql("SELECT id, count(*) FROM t GROUP BY id").rows
        assert {key for key, _ in acked} <= {key for key, _ in rows}
        assert all(count == 1 for _, count in rows)
        audited = {r["trace_id"] for r in warden.audit(limit=100_000) if r["summary"] == "INSERT t"}
        assert {trace for _, trace in acked} <= audited
