"""``lakewarden demo`` end to end: a subprocess in a temp folder, its /metrics scraped live."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_helpers import free_port

# Every family the demo's agents must move; a zero (or absent) one means a pipeline stage is idle.
FAMILIES = (
    "lakewarden_statements_total",
    "lakewarden_rows_written_total",
    "lakewarden_table_rows",
    "lakewarden_column_null_ratio",
    "lakewarden_table_last_modified_timestamp_seconds",
    "lakewarden_schema_changes_total",
    "db_client_operation_duration_seconds_count",
    "lakewarden_build_info",
)


def nonzero_families(text: str) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.value > 0
    }


@pytest.mark.slow
def test_demo_runs_agents_and_exports_every_signal(tmp_path: Path) -> None:
    port = free_port()
    # No OTLP push (nothing listens); OTEL_SDK_DISABLED is not used: the OTel SDK then also
    # empties the Prometheus exposition, which is the thing under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["COLUMNS"] = "120"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lakewarden.intake.cli",
            "demo",
            "--duration",
            "20",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    seen = nonzero_families(http.get("/metrics").text)
                except httpx.TransportError:
                    seen = set()  # not listening yet, or already stopped
                if set(FAMILIES) <= seen:
                    break
                time.sleep(0.5)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert set(FAMILIES) <= seen, f"missing: {set(FAMILIES) - seen}\n{output}"
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}/metrics" in output
    assert f"http://127.0.0.1:{port}/mcp/" in output

    lake = tmp_path / "lakewarden-demo"
    for command, expected in (
        (["snapshots", "--lake", str(lake), "--json"], "etl-writer"),
        (["check", "orders", "--lake", str(lake), "--json"], "column_removed"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "lakewarden.intake.cli", *command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout
