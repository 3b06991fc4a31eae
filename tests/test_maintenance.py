"""The lake's maintenance: small files merged, snapshots past the restore window expired, files
nothing needs deleted; never at the cost of a row, an audit record or a concurrent write."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import lakewarden
from lakewarden.core.monitor import Monitor
from lakewarden.core.warden import Warden
from lakewarden.governance.policy import parse_policy

POLICY = """\
version: 1
mode: enforce
restore: [ops]
maintenance: {{every: {every}, keep_snapshots: {keep}}}
agents:
  etl: {{read: ["*"], write: ["*"], ddl: true}}
  ops: {{read: ["*"]}}
"""


def open_lake(path: Path, every: str = "10m", keep: str = "null", **settings: float) -> Warden:
    policy = parse_policy(POLICY.format(every=every, keep=keep))
    return lakewarden.open(path, policy=policy, settings=lakewarden.Settings(**settings))


def current_files(warden: Warden, table: str = "t") -> int:
    cur = warden.engine.cursor()
    try:
        return int(cur.execute(f"SELECT count(*) FROM ducklake_list_files('lake', '{table}')")
                   .fetchone()[0])  # fmt: skip
    finally:
        cur.close()


def files_on_disk(path: Path) -> int:
    return sum(1 for p in (path / "data").rglob("*.parquet"))


def fill(warden: Warden, writes: int, rows: int = 20, start: int = 0) -> None:
    """``writes`` commits of ``rows`` rows each: more than DuckLake inlines, so one file each."""
    with warden.session("etl") as s:
        for i in range(start, start + writes):
            s.sql(f"INSERT INTO t SELECT range + {i * rows}, 'x' FROM range({rows})")


def test_small_files_are_merged_and_nothing_else_changes(lake_dir: Path) -> None:
    with open_lake(lake_dir) as warden:
        with warden.session("etl") as s:
            s.sql("CREATE TABLE t (id BIGINT, s VARCHAR)")
        fill(warden, 30)
        before = warden.table("t")
        with warden.session("etl") as s:
            early = s.sql("SELECT count(*) FROM t").rows
            snapshot_before = warden.snapshots("t", limit=1)[0].snapshot_id
        assert current_files(warden) == 30

        run = warden.maintain()

        assert (run.files_merged, run.files_written) == (30, 1)
        assert current_files(warden) == 1
        cur = warden.engine.cursor()
        newest = cur.execute(
            "SELECT author, commit_message, changes FROM lake.snapshots() "
            "ORDER BY snapshot_id DESC LIMIT 1"
        ).fetchone()
        cur.close()
        assert newest is not None
        assert newest[:2] == ("lakewarden", "MAINTENANCE merge adjacent files")
        assert list(newest[2]) == ["merge_adjacent"]
        assert warden.snapshots(limit=1)[0].message == "INSERT t"  # bookkeeping is not listed
        with warden.session("etl") as s:
            assert s.sql("SELECT count(*) FROM t").rows == early == [(600,)]
            # The restore window still reaches back past the merge.
            assert s.sql(f"SELECT count(*) FROM t AT (VERSION => {snapshot_before})").rows == [
                (600,)
            ]
        after = warden.table("t")
        assert (after.rows, after.columns) == (before.rows, before.columns)
        assert warden.maintain().files_merged == 0  # nothing left to merge


def test_snapshots_past_the_window_are_expired_and_their_files_deleted(lake_dir: Path) -> None:
    # The window is bounded below by the audit retention: both tiny here.
    with open_lake(lake_dir, keep="1s", audit_retention_days=1 / 86400) as warden:
        with warden.session("etl") as s:
            s.sql("CREATE TABLE t (id BIGINT, s VARCHAR)")
        fill(warden, 10)
        old = warden.snapshots("t", limit=1)[0].snapshot_id
        time.sleep(1.5)
        fill(warden, 1, start=10)
        recent = warden.audit(limit=1)[0]
        run = warden.maintain()
        assert run.snapshots_expired > 0
        assert files_on_disk(lake_dir) >= 1
        with pytest.raises(lakewarden.NotFound, match="restore window"):
            warden.restore("t", old, agent="ops")
        with warden.session("etl") as s:
            assert s.sql("SELECT count(*) FROM t").rows == [(220,)]
        assert recent in warden.audit(limit=10)


def test_the_audit_retention_bounds_the_restore_window(lake_dir: Path) -> None:
    with open_lake(lake_dir, keep="1s") as warden:  # audit kept 90 days by default
        with warden.session("etl") as s:
            s.sql("CREATE TABLE t (id BIGINT, s VARCHAR)")
        fill(warden, 5)
        time.sleep(1.5)
        audited = len(warden.audit(limit=1000))
        assert warden.maintain().snapshots_expired == 0
        assert len(warden.audit(limit=1000)) == audited + 0


def test_maintenance_never_loses_a_concurrent_write(lake_dir: Path) -> None:
    with open_lake(lake_dir) as warden:
        with warden.session("etl") as s:
            s.sql("CREATE TABLE t (id BIGINT, s VARCHAR)")
        stop = threading.Event()
        written: list[int] = []

        def writer(offset: int) -> None:
            i = 0
            with warden.session("etl") as s:
                while not stop.is_set():
                    key = offset + i
                    s.sql(f"INSERT INTO t SELECT range + {key * 20}, 'x' FROM range(20)")
                    written.append(key)
                    i += 1

        threads = [threading.Thread(target=writer, args=(n * 100_000,)) for n in range(3)]
        for thread in threads:
            thread.start()
        runs = []
        for _ in range(5):
            time.sleep(0.3)
            runs.append(warden.maintain())
        stop.set()
        for thread in threads:
            thread.join()
        assert sum(r.files_merged for r in runs) > 0
        with warden.session("etl") as s:
            assert s.sql("SELECT count(*), count(DISTINCT id) FROM t").rows == [
                (len(written) * 20, len(written) * 20)
            ]
        assert warden.table("t").rows == len(written) * 20


def test_the_monitor_runs_maintenance_on_its_clock(lake_dir: Path) -> None:
    with open_lake(lake_dir, every="0.2s") as warden:
        with warden.session("etl") as s:
            s.sql("CREATE TABLE t (id BIGINT, s VARCHAR)")
        fill(warden, 8)
        monitor = Monitor(warden, interval_s=0.05).start()
        try:
            deadline = time.monotonic() + 30
            while current_files(warden) > 1:
                assert time.monotonic() < deadline, "the monitor never merged the files"
                time.sleep(0.05)
        finally:
            monitor.stop()


@pytest.mark.parametrize(
    ("block", "message"),
    [
        pytest.param("{every: soon}", "invalid duration", id="bad-duration"),
        pytest.param("{every: 0}", "greater than 0", id="zero-period"),
        pytest.param("{keep: 7d}", "keep", id="misspelt-key"),
        pytest.param("{enabled: maybe}", "bool", id="not-a-bool"),
    ],
)
def test_bad_maintenance_rules_fail_validation(block: str, message: str) -> None:
    with pytest.raises(lakewarden.ConfigurationError, match=message):
        parse_policy(f"version: 1\nmaintenance: {block}\n")
