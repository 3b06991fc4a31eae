"""SIGKILL in the middle of a load: the lake and its audit trail still agree exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lakewarden

WRITER = textwrap.dedent(
    """
    import sys, lakewarden
    warden = lakewarden.open(sys.argv[1], telemetry=lakewarden.Telemetry(env={}))
    with warden.session("loader") as s:
        s.sql("CREATE TABLE IF NOT EXISTS events (id BIGINT, payload VARCHAR)")
        print("ready", flush=True)
        i = 0
        while True:
            s.sql("INSERT INTO events SELECT ? * 1000 + r, repeat('x', 200) FROM range(1000) t(r)",
                  [i])
            i += 1
    """
)


def test_killed_writer_leaves_lake_and_audit_in_agreement(lake_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(lake_dir)],
        stdout=subprocess.PIPE,
        env={**os.environ, "OTEL_SDK_DISABLED": "true"},  # ids must not need traces
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(3)  # a few seconds of writes, then kill it wherever it is
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()

    with lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as warden:
        snaps = [
            s
            for s in warden.snapshots("events", limit=100_000)
            if s.agent == "loader" and s.message == "INSERT events"
        ]
        records = [
            r
            for r in warden.audit(agent="loader", limit=100_000)
            if r["summary"] == "INSERT events"
        ]
        assert len(snaps) >= 3, "the writer committed too little to make the test meaningful"
        assert all(r["decision"] == "allowed" for r in records)
        assert sorted(r["snapshot_id"] for r in records) == sorted(s.snapshot_id for s in snaps)
        with warden.session("checker") as s:
            (rows,) = s.sql("SELECT count(*) FROM events").rows[0]
        assert rows == 1000 * len(snaps)
        # the signals were caught up from the change feed on reopen
        assert warden.table("events").rows == rows
