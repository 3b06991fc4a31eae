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


def test_sigterm_finishes_in_flight_work_and_flushes_telemetry(lake_dir: Path) -> None:
    port = free_port()
    with OTLPReceiver() as receiver:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "60000",  # nothing leaves before shutdown flushes it
        }
        proc = serve_process(["--lake", str(lake_dir), "--port", str(port)], env)
        url = f"http://127.0.0.1:{port}"
        try:
            outcome: dict[str, httpx.Response] = {}

            def slow() -> None:
                outcome["slow"] = httpx.post(f"{url}/v1/sql", json={"sql": SLOW}, timeout=60)

            worker = threading.Thread(target=slow)
            worker.start()
            time.sleep(0.3)  # the statement is running
            proc.send_signal(signal.SIGTERM)
            worker.join(timeout=60)
            assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
        assert outcome["slow"].status_code == 200, outcome["slow"].text
        body = outcome["slow"].json()
        receiver.wait_for(lambda r: any(s["trace_id"] == body["trace_id"] for s in r.spans()))
