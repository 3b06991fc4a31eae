"""The lake's PostgreSQL catalog restarted under load: two ``lakewarden serve`` processes on one
lake, agents reading and writing through both, the PostgreSQL server stopped (fast shutdown:
every session cut), kept down a few seconds and started again. Agents get retryable errors
during the outage (never a 500, never a hang), /readyz says not ready, and the sidecars recover
by themselves: every acknowledged write is in the lake exactly once, with its audit record and
snapshot, and the sidecars' table state matches the lake."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from benchmarks.services import Postgres, postgres_server

import lakewarden
from lakewarden.store import catalog, outcome
from lakewarden.wire import AGENT_HEADER

from server_helpers import free_port, serve_process

STATEMENT_TIMEOUT_S = 5
OUTAGE_S = 4
AGENTS_PER_SIDECAR = 2
# An answer may take the statement's limit plus the write lock's wait; nothing takes longer.
SLOWEST_ANSWER_S = 3 * STATEMENT_TIMEOUT_S + 10
RETRYABLE = {503, 409}


@pytest.fixture(scope="module")
def own_pg() -> Iterator[Postgres]:
    """A PostgreSQL server of this module's own: it is stopped and started, which the run's
    shared one must not be."""
    with postgres_server() as server:
        yield server


@dataclass
class Sidecar:
    url: str
    proc: object
    log: Path


@dataclass
class Agent:
    name: str
    url: str
    first_id: int
    acked: dict[int, int] = field(default_factory=dict)  # id -> snapshot id
    # Writes whose commit lost its answer and the catalog did not say within the time limit.
    unknown: list[int] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)  # status and error code of each retry
    unexpected: list[str] = field(default_factory=list)
    reads: dict[int, int] = field(default_factory=dict)  # status -> how many
    slowest_s: float = 0.0

    def run(self, stop: threading.Event) -> None:
        headers = {AGENT_HEADER: self.name}
        key = self.first_id
        with httpx.Client(base_url=self.url, headers=headers, timeout=120) as http:
            while not stop.is_set():
                answer = self._send(http, f"INSERT INTO t VALUES ({key}, '{self.name}')")
                if answer.status_code == 200:
                    self.acked[key] = answer.json()["snapshot_id"]
                    key += 1
                elif _rule(answer) == "commit_outcome_unknown":
                    self.unknown.append(key)  # found in the lake or not, never sent twice
                    key += 1
                elif answer.status_code in RETRYABLE and answer.json()["error"].get("retryable"):
                    self.retried.append(f"{answer.status_code} {answer.json()['error']['code']}")
                    time.sleep(0.2)  # the same key again: the write was not committed
                else:
                    self.unexpected.append(f"write {answer.status_code} {answer.text[:300]}")
                    key += 1
                read = self._send(http, "SELECT count(*) FROM t")
                self.reads[read.status_code] = self.reads.get(read.status_code, 0) + 1
                if read.status_code != 200 and not (
                    read.status_code in RETRYABLE and read.json()["error"].get("retryable")
                ):
                    self.unexpected.append(f"read {read.status_code} {read.text[:300]}")

    def _send(self, http: httpx.Client, text: str) -> httpx.Response:
        started = time.monotonic()
        answer = http.post("/v1/sql", json={"sql": text})
        self.slowest_s = max(self.slowest_s, time.monotonic() - started)
        return answer


def _rule(answer: httpx.Response) -> str | None:
    if answer.status_code == 200:
        return None
    violations = answer.json()["error"]["violations"]
    return violations[0]["rule"] if violations else None


def readiness(url: str, stop: threading.Event, seen: list[tuple[float, int]]) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            seen.append((time.monotonic(), http.get("/readyz").status_code))
            time.sleep(0.2)


def wait_until_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=10) as http:
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, f"{url} did not become ready again"
            time.sleep(0.2)


def test_agents_ride_out_a_catalog_restart(own_pg: Postgres, tmp_path: Path) -> None:
    db = own_pg.new_database()
    env = {
        **own_pg.env(),
        "LAKEWARDEN_STATEMENT_TIMEOUT_S": str(STATEMENT_TIMEOUT_S),
        "LAKEWARDEN_POLL_INTERVAL_S": "1",
    }
    lake = ["--lake", f"postgres:{own_pg.dsn(db)}", "--data-path", str(tmp_path / "data")]
    sidecars = []
    try:
        for i in range(2):
            port = free_port()
            log = tmp_path / f"sidecar{i}.log"
            with log.open("w") as err:
                proc = serve_process([*lake, "--port", str(port)], env, stderr=err)
            sidecars.append(Sidecar(f"http://127.0.0.1:{port}", proc, log))
        with httpx.Client(base_url=sidecars[0].url, headers={AGENT_HEADER: "setup"}) as http:
            made = http.post("/v1/sql", json={"sql": "CREATE TABLE t (id BIGINT, agent VARCHAR)"})
            assert made.status_code == 200, made.text

        agents = [
            Agent(f"agent{i}{j}", car.url, (i * AGENTS_PER_SIDECAR + j) * 1_000_000)
            for i, car in enumerate(sidecars)
            for j in range(AGENTS_PER_SIDECAR)
        ]
        stop = threading.Event()
        ready: list[tuple[float, int]] = []
        threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in agents]
        threads.append(
            threading.Thread(target=readiness, args=(sidecars[0].url, stop, ready), daemon=True)
        )
        for thread in threads:
            thread.start()
        time.sleep(2)
        own_pg.stop()
        down_at = time.monotonic()
        time.sleep(OUTAGE_S)
        restarted_at = time.monotonic()  # it may answer before pg_ctl returns
        own_pg.start()
        for car in sidecars:
            wait_until_ready(car.url)
        time.sleep(2)  # writes after the outage too
        stop.set()
        for thread in threads:
            thread.join(timeout=SLOWEST_ANSWER_S + 30)
            assert not thread.is_alive(), "an agent hung"

        for agent in agents:
            assert not agent.unexpected, (agent.name, agent.unexpected[:5])
            assert agent.slowest_s < SLOWEST_ANSWER_S, (agent.name, agent.slowest_s)
        assert any(a.retried for a in agents), "no agent met the outage"
        assert {r.split()[1] for a in agents for r in a.retried} <= {"unavailable", "conflict"}
        during = [s for t, s in ready if down_at + 1 < t < restarted_at]
        assert during and set(during) == {503}, ready
        assert ready[-1][1] == 200

        acked = {key: sid for a in agents for key, sid in a.acked.items()}
        assert len(acked) > 2 * len(agents)  # before and after the outage
        with httpx.Client(base_url=sidecars[1].url, headers={AGENT_HEADER: "check"}) as http:
            rows = http.post("/v1/sql", json={"sql": "SELECT id, agent FROM t"}).json()["rows"]
            ids = [row[0] for row in rows]
            assert len(ids) == len(set(ids)), "a write landed twice"
            unknown = {key for a in agents for key in a.unknown}
            landed = set(ids)
            assert set(acked) <= landed, "an acknowledged write is lost"
            assert landed - set(acked) <= unknown, "a write landed that its agent was told failed"
            snapshots = http.get("/v1/snapshots", params={"limit": 10_000}).json()["snapshots"]
            by_id = {s["snapshot_id"]: s for s in snapshots}
            for sid in acked.values():
                assert by_id[sid]["message"] == "INSERT t"
            audit = http.get("/v1/audit", params={"limit": 10_000}).json()["records"]
            allowed = [
                r for r in audit if r["decision"] == "allowed" and r["operation"] == "INSERT"
            ]
            assert {r["snapshot_id"] for r in allowed} >= set(acked.values())
            assert len(allowed) == len(landed)
        for car in sidecars:
            with httpx.Client(base_url=car.url, headers={AGENT_HEADER: "check"}) as http:
                deadline = time.monotonic() + 30
                while http.get("/v1/tables/t").json()["rows"] != len(landed):
                    assert time.monotonic() < deadline, http.get("/v1/tables/t").text
                    time.sleep(0.5)
    finally:
        for car in sidecars:
            proc = car.proc
            proc.terminate()  # type: ignore[attr-defined]
            proc.wait(timeout=30)  # type: ignore[attr-defined]
    for car in sidecars:
        text = car.log.read_text()
        assert "internal error" not in text, text[-3000:]


def test_readyz_and_the_sdk_while_the_catalog_is_down(own_pg: Postgres, tmp_path: Path) -> None:
    """An idle sidecar: not ready while its catalog is down, retryable errors for every kind of
    call, and ready again on its own."""
    db = own_pg.new_database()
    port = free_port()
    env = {**own_pg.env(), "LAKEWARDEN_STATEMENT_TIMEOUT_S": str(STATEMENT_TIMEOUT_S)}
    args = ["--lake", f"postgres:{own_pg.dsn(db)}", "--data-path", str(tmp_path / "data")]
    log = tmp_path / "sidecar.log"
    with log.open("w") as err:
        proc = serve_process([*args, "--port", str(port)], env, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, headers={AGENT_HEADER: "etl"}, timeout=60) as http:
            assert http.post("/v1/sql", json={"sql": "CREATE TABLE t (id BIGINT)"}).is_success
            own_pg.stop()
            try:
                ready = http.get("/readyz")
                assert ready.status_code == 503
                assert "catalog" in ready.json()["reason"].lower()
                for body in (
                    {"sql": "SELECT count(*) FROM t"},
                    {"sql": "INSERT INTO t VALUES (1)"},
                    {"statements": ["INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (3)"]},
                ):
                    answer = http.post("/v1/sql", json=body)
                    assert answer.status_code == 503, answer.text
                    error = answer.json()["error"]
                    assert (error["code"], error["retryable"]) == ("unavailable", True)
                    assert "catalog" in error["message"]
                # The tables' signals are known without the catalog; the snapshot list and
                # the audit trail are in it.
                assert http.get("/v1/tables").status_code == 200
                for path in ("/v1/snapshots", "/v1/audit"):
                    answer = http.get(path)
                    assert answer.status_code == 503, (path, answer.text)
                    assert answer.json()["error"]["retryable"] is True
            finally:
                own_pg.start()
            wait_until_ready(url)
            assert http.post("/v1/sql", json={"sql": "INSERT INTO t VALUES (4)"}).is_success
            rows = http.post("/v1/sql", json={"sql": "SELECT id FROM t"}).json()["rows"]
            assert rows == [[4]]
            # The refused statements are counted as failed, by their error code.
            metrics = http.get("/metrics").text
            assert any(
                line.startswith("lakewarden_statements_total{")
                and 'lakewarden_decision="failed"' in line
                for line in metrics.splitlines()
            )
            assert any(
                line.startswith("db_client_operation_duration_seconds_count{")
                and 'error_type="unavailable"' in line
                for line in metrics.splitlines()
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "internal error" not in log.read_text()
    assert os.path.exists(tmp_path / "data")


def test_a_commit_whose_answer_was_lost_is_found_by_its_id(
    own_pg: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the store does when the server goes away during a COMMIT: it asks the catalog for
    the commit's id once it answers; while it does not, the outcome is unknown and the agent is
    told not to send the write blindly again."""
    monkeypatch.setenv("PGPASSWORD", own_pg.password)
    warden = lakewarden.open(
        f"postgres:{own_pg.dsn(own_pg.new_database())}",
        data_path=tmp_path / "data",
        telemetry=lakewarden.Telemetry(env={}),
    )
    try:
        with warden.session("etl") as s:
            s.sql("CREATE TABLE t (id BIGINT)")
            done = s.sql("INSERT INTO t VALUES (1)")
        mine = warden.engine.cursor()
        try:
            commit_id = catalog.snapshots(mine, limit=1)[0].commit_id
        finally:
            mine.close()
        assert commit_id is not None
        assert done.snapshot_id is not None
        after = done.snapshot_id - 1
        assert outcome.find(warden.engine, commit_id, after, 5) == done.snapshot_id
        assert outcome.find(warden.engine, "0" * 32, after, 5) is None
        own_pg.stop()
        try:
            with pytest.raises(lakewarden.Unavailable) as raised:
                outcome.find(warden.engine, commit_id, after, 1)
            assert raised.value.violations[0].rule == "commit_outcome_unknown"
            assert not raised.value.retryable
            assert "trace_id" in raised.value.message
        finally:
            own_pg.start()
        assert outcome.find(warden.engine, commit_id, after, 10) == done.snapshot_id
    finally:
        warden.close()
