"""The lake's storage failing under a running sidecar: a full device and a read-only remount.

Real devices: a small tmpfs mounted under the lake (its data folder, or the whole lake with its
catalog file), filled with a filler file or remounted read-only while the server runs. Agents
get a retryable error that names the problem, nothing of the refused write is committed or left
behind, reads keep working, and the sidecar recovers by itself once the device does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import lakewarden
from lakewarden.client import Client
from lakewarden.store.faults import answer_lost, storage_failure
from lakewarden.wire import AGENT_HEADER

from server_helpers import Served, free_port, serve, serve_process

BIG_INSERT = "INSERT INTO t SELECT 1000 + range, md5(range::VARCHAR) FROM range(100000)"
BIG_ROWS = 100_000  # about 3.6 MB of Parquet: random text does not compress


@contextlib.contextmanager
def device(where: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted at ``where`` for the test; skipped where mounting is not
    permitted (not root, or a container without CAP_SYS_ADMIN)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def remount(where: Path, mode: str) -> None:
    done = subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(where)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def fill(where: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about ``leave_bytes`` free on ``where``'s device."""
    stat = os.statvfs(where)
    size = stat.f_bavail * stat.f_frsize - leave_bytes
    filler = where / "filler"
    with filler.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(size, 1))
    return filler


def data_files(data: Path) -> set[str]:
    return {p.name for p in data.rglob("*.parquet")}


def sql(http: httpx.Client, text: str) -> httpx.Response:
    return http.post("/v1/sql", json={"sql": text})


def count(http: httpx.Client) -> int:
    answer = sql(http, "SELECT count(*) FROM t")
    assert answer.status_code == 200, answer.text
    return int(answer.json()["rows"][0][0])


def snapshot_ids(http: httpx.Client) -> list[int]:
    answer = http.get("/v1/snapshots", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    return [s["snapshot_id"] for s in answer.json()["snapshots"]]


@pytest.fixture
def served_on_device(tmp_path: Path) -> Iterator[tuple[Served, Path]]:
    """A server whose lake keeps its data files on a 20 MB device (its catalog elsewhere)."""
    lake = tmp_path / "lake"
    with device(lake / "data", 20) as data, serve(lake) as served:
        yield served, data


def test_a_write_that_does_not_fit_is_refused_and_succeeds_once_space_returns(
    served_on_device: tuple[Served, Path],
) -> None:
    served, data = served_on_device
    with httpx.Client(base_url=served.url, headers={AGENT_HEADER: "etl"}, timeout=60) as http:
        assert sql(http, "CREATE TABLE t (id BIGINT, pad VARCHAR)").status_code == 200
        assert sql(http, "INSERT INTO t SELECT range, 'x' FROM range(100)").status_code == 200
        files, snapshots = data_files(data), snapshot_ids(http)
        filler = fill(data, 1 << 20)

        refused = sql(http, BIG_INSERT)
        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        assert error["code"] == "insufficient_storage"
        assert error["retryable"] is True
        assert "no space left" in error["message"]
        assert "nothing was committed" in error["message"]
        assert str(data) in error["message"]  # where: the file it could not write
        assert error["violations"][0]["rule"] == "no_space"

        # Nothing committed, nothing half-written left behind to keep the device full.
        assert snapshot_ids(http) == snapshots
        assert count(http) == 100
        assert data_files(data) == files
        trace = refused.json()["trace_id"]
        records = http.get("/v1/audit", params={"limit": 50}).json()["records"]
        mine = [r for r in records if r["trace_id"] == trace]
        assert [(r["decision"], r["snapshot_id"]) for r in mine] == [("failed", None)]

        # The SDK raises the same error, retryable.
        with Client(served.url) as client, client.session("etl") as s:
            with pytest.raises(lakewarden.InsufficientStorage) as raised:
                s.sql(BIG_INSERT)
            assert raised.value.retryable

        # ... and so does the in-process SDK.
        with served.warden.session("etl") as s, pytest.raises(lakewarden.InsufficientStorage):
            s.sql(BIG_INSERT)

        # Small writes that fit still commit; the engine is fine.
        assert sql(http, "INSERT INTO t VALUES (1, 'fits')").status_code == 200
        assert http.get("/readyz").status_code == 200

        filler.unlink()
        again = sql(http, BIG_INSERT)
        assert again.status_code == 200, again.text
        assert again.json()["rows_affected"] == BIG_ROWS
        assert count(http) == 100 + 1 + BIG_ROWS

    span = next(s for s in served.spans.get_finished_spans() if s.attributes.get("error.type"))
    assert span.attributes["lakewarden.decision"] == "failed"
    assert span.attributes["error.type"] == "insufficient_storage"
    failed = served.warden.telemetry.prometheus_text().decode()
    assert 'lakewarden_decision="failed"' in failed


def test_a_read_only_data_path_refuses_writes_keeps_reads_and_recovers(
    served_on_device: tuple[Served, Path],
) -> None:
    served, data = served_on_device
    with httpx.Client(base_url=served.url, headers={AGENT_HEADER: "etl"}, timeout=60) as http:
        assert sql(http, "CREATE TABLE t (id BIGINT, pad VARCHAR)").status_code == 200
        assert sql(http, "INSERT INTO t SELECT range, 'x' FROM range(100)").status_code == 200
        snapshots = snapshot_ids(http)
        remount(data, "ro")
        try:
            refused = sql(http, BIG_INSERT)
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert (error["code"], error["retryable"]) == ("unavailable", True)
            assert "read-only" in error["message"]
            assert "nothing was committed" in error["message"]
            assert error["violations"][0]["rule"] == "read_only_storage"
            assert count(http) == 100
            assert snapshot_ids(http) == snapshots
            assert http.get("/readyz").status_code == 200  # it still serves reads
            # A few rows are kept in the catalog itself (DuckLake's inlining), not the data
            # path: such a write still commits.
            assert sql(http, "INSERT INTO t VALUES (-1, 'inlined')").status_code == 200
        finally:
            remount(data, "rw")
        # No restart: the next write lands.
        assert sql(http, BIG_INSERT).status_code == 200
        assert count(http) == 100 + 1 + BIG_ROWS


def test_a_full_catalog_device_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """The whole lake, its DuckDB catalog file included, on a device that fills up: commits
    that cannot be logged are refused, those acknowledged survive the server's stop on the full
    device (its checkpoint fails; the write-ahead log keeps them) and its start once space is
    back, each exactly once."""
    port = free_port()
    args = ["--lake", str(tmp_path / "dev" / "lake"), "--port", str(port)]
    log = tmp_path / "server.log"
    with device(tmp_path / "dev", 8) as dev:
        with log.open("w") as err:
            proc = serve_process(args, dict(os.environ), stderr=err)
        acked: list[int] = []
        refused: list[int] = []
        try:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, headers={AGENT_HEADER: "etl"}, timeout=60) as http:
                assert sql(http, "CREATE TABLE t (id BIGINT, pad VARCHAR)").status_code == 200
                fill(dev, 64 << 10)
                for key in range(60):
                    answer = sql(http, f"INSERT INTO t VALUES ({key}, '{'y' * 200}')")
                    assert answer.status_code in (200, 507), answer.text
                    (acked if answer.status_code == 200 else refused).append(key)
                assert refused, "the device never filled up"
                assert answer.json()["error"]["code"] == "insufficient_storage"
                ids = sql(http, "SELECT id FROM t ORDER BY id").json()["rows"]
                assert [row[0] for row in ids] == acked
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        (dev / "filler").unlink()
        with log.open("a") as err:
            proc = serve_process(args, dict(os.environ), stderr=err)
        try:
            with httpx.Client(base_url=url, headers={AGENT_HEADER: "etl"}, timeout=60) as http:
                ids = sql(http, "SELECT id FROM t ORDER BY id").json()["rows"]
                assert [row[0] for row in ids] == acked
                # The table's state (saved beside the lake, which failed on the full device)
                # and the audit trail (inside each commit) agree with the lake.
                assert http.get("/v1/tables/t").json()["rows"] == len(acked)
                audit = http.get("/v1/audit", params={"limit": 1000}).json()["records"]
                inserts = [r for r in audit if r["operation"] == "INSERT"]
                assert sum(r["decision"] == "allowed" for r in inserts) == len(acked)
                assert all(r["snapshot_id"] for r in inserts if r["decision"] == "allowed")
                assert sql(http, f"INSERT INTO t VALUES ({refused[0]}, 'again')").status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def test_checkpoints_wait_for_room_on_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No commit checkpoints a database file by itself (one failing on a full device reported
    a durable commit as failed and stopped the lake); lakewarden does after a commit, and only
    when the device has room for it."""
    from lakewarden.store import engine as engine_module

    monkeypatch.setattr(engine_module, "_CHECKPOINT_HEADROOM_BYTES", 4 << 20)
    with device(tmp_path / "dev", 8) as dev:
        warden = lakewarden.open(dev / "lake", telemetry=lakewarden.Telemetry(env={}))
        wal = dev / "lake" / "meta.ducklake.wal"
        try:
            with warden.session("etl") as s:
                s.sql("CREATE TABLE t (id BIGINT)")
                s.sql("INSERT INTO t VALUES (1)")
                assert wal.stat().st_size > 0  # under the threshold: kept in the log
                monkeypatch.setattr(engine_module, "CHECKPOINT_WAL_BYTES", 1)
                filler = fill(dev, 1 << 20)
                s.sql("INSERT INTO t VALUES (2)")  # commits; no room to checkpoint after it
                assert wal.stat().st_size > 0
                assert warden.engine.checkpoint() == []
                filler.unlink()
                s.sql("INSERT INTO t VALUES (3)")  # commits, then checkpoints
                assert not wal.exists() or wal.stat().st_size == 0
                assert s.sql("SELECT count(*) AS n FROM t").pl()["n"][0] == 3
        finally:
            warden.close()


# The engine's words for each fault (measured with duckdb 1.5.5; see store/faults.py) -> the
# error code and violation rule the agent gets. A statement's own error is none of them.
WORDS = [
    (
        "data_file_full",
        'IO Error: Could not write file "/lake/data/main/t/ducklake-x.parquet": '
        "No space left on device",
        ("insufficient_storage", "no_space"),
    ),
    (
        "catalog_log_full",
        "TransactionContext Error: Failed to commit: Failed to commit DuckLake transaction.\n"
        'Failed to commit: Could not write file "/lake/meta.ducklake.wal": No space left on device',
        ("insufficient_storage", "no_space"),
    ),
    (
        "read_only",
        'IO Error: Could not write file "/lake/data/main/t/ducklake-x.parquet": '
        "Read-only file system",
        ("unavailable", "read_only_storage"),
    ),
    (
        "catalog_refused",
        'IO Error: Unable to connect to Postgres at "dbname=lake": connection to server at '
        '"127.0.0.1", port 5432 failed: Connection refused',
        ("unavailable", "catalog_unreachable"),
    ),
    (
        "catalog_cut_at_commit",
        'TransactionContext Error: Failed to commit: Failed to execute query "COMMIT": server '
        "closed the connection unexpectedly",
        ("unavailable", "catalog_unreachable"),
    ),
    ("statement_error", 'Catalog Error: Table with name "nope" does not exist!', None),
    ("no_space_as_data", "Conversion Error: 'No space' is not a number", None),
]


@pytest.mark.parametrize(("text", "expected"), [w[1:] for w in WORDS], ids=[w[0] for w in WORDS])
def test_faults_are_told_from_statement_errors(text: str, expected: tuple[str, str] | None) -> None:
    fault = storage_failure(Exception(text))
    if expected is None:
        assert fault is None
    else:
        assert fault is not None
        assert (fault.code, fault.violations[0].rule) == expected
        assert fault.retryable
        assert "nothing was committed" in fault.message


@pytest.mark.parametrize(
    ("text", "lost"),
    [
        ('Unable to connect to Postgres at "dbname=lake": Connection refused', False),
        ("FATAL:  the database system is starting up", False),
        ('Failed to execute query "COMMIT": server closed the connection unexpectedly', True),
        (
            'Failed to commit DuckLake transaction.\nFailed to execute query "ROLLBACK":\n'
            'Unable to connect to Postgres at "dbname=lake"',
            True,
        ),
    ],
    ids=["refused", "starting_up", "cut_during_commit", "cut_then_refused"],
)
def test_a_commit_may_have_landed_only_when_its_connection_broke(text: str, lost: bool) -> None:
    """Only then is the lake asked for the commit before the agent is answered (see
    store/outcome.py): a connection never made carried no COMMIT."""
    fault = storage_failure(Exception(text))
    assert fault is not None
    assert answer_lost(fault) is lost
