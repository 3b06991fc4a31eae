"""``lakewarden demo`` end to end: a subprocess in a temp folder, its /metrics scraped live."""

from __future__ import annotations

import json
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


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        value
        for got, value in samples(text, name)
        if all(got.get(k) == v for k, v in labels.items())
    )


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lakewarden.intake.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_demo_shows_what_lakewarden_is_for(tmp_path: Path) -> None:
    """Within 20 s: a gate block, a refusal, a schema change, a warn-mode flag and a restore, in
    the metrics and in the lake; the commands the demo suggests work while it runs."""
    port = free_port()
    # No OTLP push (nothing listens); OTEL_SDK_DISABLED is not used: the OTel SDK then also
    # empties the Prometheus exposition, which is the thing under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LAKEWARDEN_"))}
    env["COLUMNS"] = "80"
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
    lake = tmp_path / "lakewarden-demo"
    seen: set[str] = set()
    metrics = ""
    during: list[subprocess.CompletedProcess[str]] = []
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    metrics = http.get("/metrics").text
                    seen = nonzero_families(metrics)
                except httpx.TransportError:
                    time.sleep(0.5)
                    continue  # not listening yet, or already stopped
                if not during and _story_told(metrics):
                    # what the demo tells the user to try, while it runs (as printed by it)
                    server = f"http://127.0.0.1:{port}"
                    for args in (
                        ["check", "orders", "--lake", "lakewarden-demo", "--server", server],
                        [
                            "snapshots",
                            "--lake",
                            "lakewarden-demo",
                            "--server",
                            server,
                            "--limit",
                            "200",
                        ],
                    ):
                        during.append(cli(args, tmp_path, env))
                if set(FAMILIES) <= seen and during and _story_told(metrics):
                    break
                time.sleep(0.5)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert set(FAMILIES) <= seen, f"missing: {set(FAMILIES) - seen}\n{output}"
    assert _story_told(metrics), metrics
    assert total(metrics, "lakewarden_quality_gate_blocks_total") >= 1
    assert total(metrics, "lakewarden_statements_total", lakewarden_decision="denied") >= 1
    assert total(metrics, "lakewarden_schema_changes_total", lakewarden_change="column_added") >= 1
    assert proc.returncode == 0, output
    assert f"--server http://127.0.0.1:{port}" in output, "the demo says how to reach it"
    assert during, f"the demo ended before its story was told:\n{output}"
    for done in during:
        assert done.returncode == 0, done.stderr
    assert "orders" in during[0].stdout and "RESTORE" in during[1].stdout
    # the live view at 80 columns: nothing cut short
    for word in ("careless", "backfill", "etl-writer", "blocked", "flagged", "restored"):
        assert word in output
    assert "…" not in output, output

    # the lake remembers it all, and the CLI reads it afterwards with the demo's own policy
    records = json.loads(
        cli(["audit", "--lake", str(lake), "--json", "--limit", "1000"], tmp_path, env).stdout
    )
    decisions = {r["decision"] for r in records}
    assert {"allowed", "denied", "blocked", "restored"} <= decisions, decisions
    flagged = [r for r in records if r["agent"] == "backfill" and r["violations"]]
    assert flagged and all(r["decision"] == "allowed" for r in flagged)
    snaps = cli(["snapshots", "--lake", str(lake), "--json"], tmp_path, env)
    assert snaps.returncode == 0, snaps.stderr
    assert all(isinstance(s["snapshot_id"], int) for s in json.loads(snaps.stdout))
    check = cli(["check", "orders", "--lake", str(lake), "--json"], tmp_path, env)
    assert check.returncode == 0, check.stderr
    info = json.loads(check.stdout)
    assert info["schema_changes"].get("column_added") == 1
    names = {c["check"] for c in info["checks"]}
    assert "null_ratio:email" in names, "check uses the demo's policy from the lake folder"
    anomalies = [c for c in info["checks"] if c["check"] == "freshness_anomaly"]
    assert all(c["passing"] for c in anomalies), "the demo ending is not a freshness anomaly"


def _story_told(metrics: str) -> bool:
    return (
        total(metrics, "lakewarden_quality_gate_blocks_total") >= 1
        and total(metrics, "lakewarden_statements_total", lakewarden_decision="denied") >= 1
        and total(metrics, "lakewarden_schema_changes_total") >= 1
        and total(metrics, "lakewarden_statements_total", lakewarden_decision="restored") >= 1
    )
