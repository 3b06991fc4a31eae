"""A fleet: three ``lakewarden serve`` processes on one lake, its catalog in PostgreSQL and its
data in an S3 bucket, agents reading and writing through all of them at once; one sidecar
killed mid-load and replaced by a new one that catches up without profiling a table."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from benchmarks.services import S3, Postgres

import lakewarden
from lakewarden.wire import AGENT_HEADER

from server_helpers import free_port, serve_process

AGENTS_PER_SIDECAR = 4
WRITES_PER_AGENT = 10


class Sidecar:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        self.proc = serve_process([*args, "--port", str(self.port)], env, stderr=self.log)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") and all(w in line for w in wanted)
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()


class Agent(threading.Thread):
    """Inserts fresh ids (retrying a retryable conflict), reading between writes."""

    def __init__(self, sidecar: Sidecar, name: str, first_id: int) -> None:
        super().__init__(daemon=True)
        self.sidecar, self.agent, self.first_id = sidecar, name, first_id
        self.acked: list[int] = []
        self.attempted: list[int] = []
        self.errors: list[str] = []
        self.retries = 0
        self.cut_off = False  # its sidecar went away

    def run(self) -> None:
        headers = {AGENT_HEADER: self.agent}
        with httpx.Client(base_url=self.sidecar.url, headers=headers, timeout=60) as http:
            for key in range(self.first_id, self.first_id + WRITES_PER_AGENT):
                try:
                    self._insert(http, key)
                    read = http.post("/v1/sql", json={"sql": "SELECT count(*) FROM t"})
                    if read.status_code != 200:
                        self.errors.append(f"read {read.status_code} {read.text[:200]}")
                except httpx.TransportError:
                    self.cut_off = True
                    return

    def _insert(self, http: httpx.Client, key: int) -> None:
        sql = {"sql": "INSERT INTO t VALUES (?, ?)", "params": [key, self.agent]}
        for _ in range(30):
            self.attempted.append(key)
            response = http.post("/v1/sql", json=sql)
            if response.status_code == 200:
                self.acked.append(key)
                return
            error = response.json()["error"]
            if response.status_code == 409 and error.get("retryable"):
                self.retries += 1
                continue
            self.errors.append(f"{response.status_code} {error}")
            return
        self.errors.append(f"insert {key}: still conflicting after 30 tries")


def test_three_sidecars_one_lake_with_one_killed_and_replaced(
    pg: Postgres, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, bucket = pg.new_database(), s3.new_bucket()
    data = f"s3://{bucket}/lake"
    env = {
        **pg.env(),
        **s3.env(),
        "LAKEWARDEN_DATA_PATH": data,
        "LAKEWARDEN_POLL_INTERVAL_S": "0.5",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    lake = f"postgres:{pg.dsn(db)}"
    setup = lakewarden.open(lake)
    with setup.session(agent="admin") as s:
        s.sql("CREATE TABLE t (id BIGINT, who VARCHAR)")
    setup.close()

    sidecars = [Sidecar(["--lake", lake], env, tmp_path / f"sidecar-{k}.log") for k in range(3)]
    replacement: Sidecar | None = None
    try:
        agents = [
            Agent(sidecars[k % 3], f"agent-{k}", 1_000 * (k + 1))
            for k in range(3 * AGENTS_PER_SIDECAR)
        ]
        for agent in agents:
            agent.start()
        # Mid-load, the third sidecar dies without a chance to clean up.
        deadline = time.monotonic() + 60
        while sum(len(a.acked) for a in agents) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = sidecars[2]
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=30)
        for agent in agents:
            agent.join(timeout=120)
        assert not any(a.is_alive() for a in agents)

        survivors = [a for a in agents if a.sidecar is not victim]
        assert [e for a in agents for e in a.errors] == []
        assert not any(a.cut_off for a in survivors)
        assert all(len(a.acked) == WRITES_PER_AGENT for a in survivors)

        # Every acknowledged write is in the lake exactly once; nothing else but writes that
        # were in flight on the killed sidecar.
        acked = {k for a in agents for k in a.acked}
        attempted = {k for a in agents for k in a.attempted}
        check = lakewarden.open(lake)
        try:
            with check.session(agent="check") as s:
                ids = s.sql("SELECT id FROM t").pl()["id"].to_list()
        finally:
            check.close()
        assert len(ids) == len(set(ids))
        assert acked <= set(ids) <= attempted

        # One author and one audit record per snapshot that wrote rows.
        rows = pg.psql(
            "SELECT author, commit_extra_info FROM ducklake_snapshot_changes "
            "WHERE changes_made LIKE '%insert%' AND author LIKE 'agent-%'",
            db,
        ).splitlines()
        assert len(rows) == len(set(ids))
        for row in rows:
            author, extra = row.split("|", 1)
            records = json.loads(extra)["audit"]
            assert len(records) == 1, records
            assert records[0]["decision"] == "allowed" and records[0]["tables"] == ["t"]
            assert author.startswith("agent-")

        # A replacement on a fresh machine catches up from the shared state and the change
        # feed: no table profiled, and every sidecar shows the same table size.
        replacement = Sidecar(["--lake", lake], env, tmp_path / "replacement.log")
        for sidecar in (sidecars[0], sidecars[1], replacement):
            deadline = time.monotonic() + 30
            while sidecar.metric("lakewarden_table_rows", db_collection_name="t") != len(ids):
                assert time.monotonic() < deadline, f"{sidecar.url} never saw {len(ids)} rows"
                time.sleep(0.25)
        profiled = replacement.metric(
            "lakewarden_signal_duration_seconds_count", lakewarden_signal="profile"
        )
        assert profiled == 0
        for sidecar in (sidecars[0], sidecars[1], replacement):
            assert "Traceback" not in Path(sidecar.log.name).read_text()
    finally:
        for sidecar in [*sidecars, *([replacement] if replacement else [])]:
            sidecar.stop()


def test_catalog_credentials_never_reach_the_command_line_or_the_logs(
    pg: Postgres, s3: S3, tmp_path: Path
) -> None:
    db, bucket = pg.new_database(), s3.new_bucket()
    env = {**pg.env(), **s3.env(), "LAKEWARDEN_DATA_PATH": f"s3://{bucket}/lake"}
    sidecar = Sidecar(["--lake", f"postgres:{pg.dsn(db)}"], env, tmp_path / "sidecar.log")
    try:
        cmdline = Path(f"/proc/{sidecar.proc.pid}/cmdline").read_bytes().decode()
        httpx.post(sidecar.url + "/v1/sql", json={"sql": "SELECT 1"}, timeout=30)
    finally:
        sidecar.stop()
    logged = Path(sidecar.log.name).read_text()
    for secret in (pg.password, s3.env()["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in cmdline and secret not in logged


def test_the_local_fleet_script_runs_three_sidecars_on_one_lake() -> None:
    """deploy/fleet/local-fleet.sh, as docs/fleet.md tells users to run it."""
    folder = Path(tempfile.mkdtemp(prefix="lakewarden-fleet-"))
    folder.chmod(0o755)  # the cluster may run as the postgres user
    ports = [free_port() for _ in range(3)]
    env = {
        **os.environ,
        "LAKEWARDEN_FLEET_PORTS": " ".join(map(str, ports)),
        "LAKEWARDEN_FLEET_PG_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    script = Path(__file__).resolve().parents[1] / "deploy" / "fleet" / "local-fleet.sh"
    proc = subprocess.Popen(
        ["bash", str(script), str(folder / "fleet")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, seen = [], []
        while len(ready) < 3:
            line = proc.stdout.readline()
            seen.append(line)
            if not line:
                logs = {p.name: p.read_text()[-2000:] for p in (folder / "fleet").glob("*.log")}
                raise AssertionError(f"the script ended early: {''.join(seen)} {logs}")
            if line.startswith("sidecar ready"):
                ready.append(line)
        first, last = (f"http://127.0.0.1:{p}" for p in (ports[0], ports[2]))
        for sql in ("CREATE TABLE t (id BIGINT)", "INSERT INTO t VALUES (1), (2)"):
            assert httpx.post(first + "/v1/sql", json={"sql": sql}, timeout=60).status_code == 200
        answer = httpx.post(last + "/v1/sql", json={"sql": "SELECT count(*) FROM t"}, timeout=60)
        assert answer.json()["rows"] == [[2]]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
    assert "fleet stopped" in out
