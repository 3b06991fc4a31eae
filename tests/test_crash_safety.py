"""SIGKILL in the middle of a load: the lake and its audit trail still agree exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

import lakewarden

from server_helpers import free_port, serve_process

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


# Writes of every kind, then the writer waits: its table state is saved write-behind, and the
# delay is set far longer than the test, so the kill lands between the commits and the save.
UNSAVED = textwrap.dedent(
    """
    import sys, time, lakewarden
    warden = lakewarden.open(sys.argv[1], telemetry=lakewarden.Telemetry(env={}))
    with warden.session("loader") as s:
        for i in range(4):
            s.sql("INSERT INTO events (id, kind) SELECT ? * 100 + r, "
                  "CASE WHEN r % 3 = 0 THEN NULL ELSE 'k' END FROM range(50) t(r)", [i + 1])
        s.sql("INSERT INTO events (id) VALUES (?)", [9999])
        s.sql("DELETE FROM events WHERE id % 7 = 0")
        s.sql("UPDATE events SET kind = NULL WHERE id % 5 = 0")
        s.sql("ALTER TABLE events ADD COLUMN score DOUBLE")
        s.sql("INSERT INTO events (id, score) VALUES (10000, 1.5), (10001, NULL)")
        last = s.sql("INSERT INTO events (id) VALUES (10002)").snapshot_id
        print(last, flush=True)
        time.sleep(600)
    """
)


def _state_mark(lake_dir: Path) -> int | None:
    import duckdb

    con = duckdb.connect(str(lake_dir / "lakewarden-state.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT value FROM meta WHERE key = 'snapshot_id'").fetchall()
        return int(rows[0][0]) if rows else None
    finally:
        con.close()


def _signals(warden: lakewarden.Warden) -> dict[str, object]:
    state = warden.table("events")
    return {
        "rows": state.rows,
        "columns": {c.name: (c.type, c.null_count) for c in state.columns},
        "last_writer": state.last_writer,
    }


def test_state_not_saved_before_a_kill_is_replayed_from_the_change_feed(lake_dir: Path) -> None:
    with lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as warden:
        warden.sql("CREATE TABLE events (id BIGINT, kind VARCHAR)", agent="loader")
        warden.sql("INSERT INTO events VALUES (1, NULL), (2, 'a')", agent="loader")
    saved = _state_mark(lake_dir)
    assert saved is not None

    proc = subprocess.Popen(
        [sys.executable, "-c", UNSAVED, str(lake_dir)],
        stdout=subprocess.PIPE,
        env={**os.environ, "OTEL_SDK_DISABLED": "true", "LAKEWARDEN_STATE_SAVE_DELAY_MS": "60000"},
    )
    try:
        assert proc.stdout is not None
        last = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _state_mark(lake_dir) == saved < last, "the kill did not land before the save"

    with lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as warden:
        assert warden.tracker.snapshot_id == last
        replayed_signals = _signals(warden)
        writes = warden.tracker.writes("events")
        # Every write since the saved mark was replayed into the anomaly history, once.
        replayed = [w for w in writes if w.snapshot_id is not None and w.snapshot_id > saved]
        assert len(replayed) == len({w.snapshot_id for w in replayed}) >= 7
    assert _state_mark(lake_dir) == last  # saved on close

    # A full re-profile of the same lake, with no state at all, is the reference.
    (lake_dir / "lakewarden-state.duckdb").unlink()
    with lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as reference:
        assert replayed_signals == _signals(reference)


@pytest.mark.parametrize("catalog", ["duckdb", "postgres"])
def test_sigkill_of_a_serving_sidecar_under_load_loses_no_acknowledged_write(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, catalog: str
) -> None:
    """Eight agents write and read through a real server; it is SIGKILLed mid-load. On restart
    every acknowledged write is there once, audit and snapshots agree, and the table's state
    caught up from the change feed."""
    env = {**os.environ, "OTEL_SDK_DISABLED": "true"}
    if catalog == "postgres":
        pg = request.getfixturevalue("pg")
        lake, data_path = f"postgres:{pg.dsn(pg.new_database())}", tmp_path / "data"
        data_path.mkdir()
        env = {**pg.env(), "OTEL_SDK_DISABLED": "true"}
        monkeypatch.setenv("PGPASSWORD", pg.password)  # for the restart in this process
        where = ["--lake", lake, "--data-path", str(data_path)]
    else:
        lake, data_path = str(tmp_path / "lake"), None
        where = ["--lake", lake]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve_process([*where, "--port", str(port)], env)
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def agent(n: int) -> None:
        with httpx.Client(base_url=url, timeout=30, headers={"X-Lakewarden-Agent": f"a{n}"}) as h:
            for i in range(100_000):
                if stop.is_set():
                    return
                key = n * 1_000_000 + i
                try:
                    if i % 3 == 2:
                        h.post("/v1/sql", json={"sql": "SELECT count(*) FROM t"})
                        continue
                    r = h.post("/v1/sql", json={"sql": f"INSERT INTO t VALUES ({key}, 'x')"})
                except httpx.TransportError:
                    return  # the sidecar is gone
                if r.status_code == 200:
                    with lock:
                        acked.append(key)

    try:
        httpx.post(f"{url}/v1/sql", json={"sql": "CREATE TABLE t (id BIGINT, v VARCHAR)"})
        agents = [threading.Thread(target=agent, args=(n,)) for n in range(8)]
        for thread in agents:
            thread.start()
        deadline = time.monotonic() + 120
        while len(acked) < 40 and time.monotonic() < deadline:  # mid-load, however slow
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        stop.set()
        for thread in agents:
            thread.join(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 40, "too few writes to make the test meaningful"

    with lakewarden.open(lake, data_path=data_path, telemetry=lakewarden.Telemetry(env={})) as w:
        with w.session("checker") as s:
            rows = dict(s.sql("SELECT id, count(*) FROM t GROUP BY id").rows)
        assert set(acked) <= set(rows), "an acknowledged write was lost"
        assert set(rows.values()) == {1}
        snaps = {s.snapshot_id for s in w.snapshots("t", limit=100_000) if s.message == "INSERT t"}
        records = [r for r in w.audit(limit=100_000) if r["summary"] == "INSERT t"]
        assert {r["snapshot_id"] for r in records} == snaps
        assert len(records) == len(rows)  # one audit record per committed row here
        assert w.table("t").rows == len(rows)
