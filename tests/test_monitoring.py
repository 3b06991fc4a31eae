"""Continuous monitoring: freshness on a clock, anomaly scores, and writers outside lakewarden."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from opentelemetry.trace import StatusCode

import lakewarden
from lakewarden.core.monitor import Monitor
from lakewarden.signals.checks import Finding
from lakewarden.signals.table_state import WriteRecord
from lakewarden.store.state import StateStore
from lakewarden.wire import AGENT_HEADER

from conftest import SyncedSpans, sample, samples
from server_helpers import serve

HOUR = 3600.0


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_stale_table_flips_within_one_evaluation(tmp_path: Path, lake_dir: Path) -> None:
    policy = _policy(
        tmp_path,
        """\
        version: 1
        mode: enforce
        agents: {etl: {write: ["*"], ddl: true}}
        tables: {orders: {freshness_sla: 1m}}
    """,
    )
    spans = SyncedSpans()
    warden = lakewarden.open(
        lake_dir, policy=policy, telemetry=lakewarden.Telemetry(span_exporters=[spans], env={})
    )
    with warden.session("etl") as s:
        s.sql("CREATE TABLE orders (id INT)")
        s.sql("INSERT INTO orders VALUES (1)")
    written = warden.table("orders").last_modified
    assert written is not None
    clock = Clock(written + 30)
    warden.clock = clock
    monitor = Monitor(warden, interval_s=10)
    assert monitor.tick() == []
    assert sample(warden, "lakewarden_check_passing", lakewarden_check_name="freshness") == 1
    clock.now = written + 61  # one evaluation period later, with no traffic at all
    (flip,) = monitor.tick()
    assert (flip.table, flip.check, flip.passing) == ("orders", "freshness", False)
    assert sample(warden, "lakewarden_check_passing", lakewarden_check_name="freshness") == 0
    (span,) = [s for s in spans.get_finished_spans() if s.name == "CHECK orders"]
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["lakewarden.check.name"] == "freshness"
    assert monitor.tick() == []  # no new event while it stays stale
    with warden.session("etl") as s:
        s.sql("INSERT INTO orders VALUES (2)")
    clock.now = warden.table("orders").last_modified + 1  # type: ignore[operator]
    (back,) = monitor.tick()
    assert back.passing
    warden.close()


def _hourly_loads(end: float, days: int, seed: int) -> list[WriteRecord]:
    """Hourly loads of about 10,000 rows with a weekly pattern and 5% noise, ending at ``end``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(days * 24):
        at = end - (days * 24 - i) * HOUR
        hour_of_week = int((at // HOUR + 72) % 168)  # the epoch was a Thursday
        weekly = 1.0 + 0.4 * math.sin(2 * math.pi * hour_of_week / 168)
        rows = int(10_000 * weekly * (1 + rng.normal(0, 0.05)))
        jitter = float(rng.normal(0, 60))
        out.append(WriteRecord(at + jitter, rows, 0, "loader", None))
    return out


ANOMALY_POLICY = """\
    version: 1
    mode: observe
    agents: {loader: {write: ["*"], ddl: true}}
    tables:
      loads:
        anomaly:
          volume: {min_training: 4, seasonality: hour_of_week, direction: drop}
          freshness: {min_training: 14}
      young:
        anomaly: {volume: {min_training: 14}}
"""


@pytest.fixture
def history_lake(tmp_path: Path, lake_dir: Path) -> tuple[lakewarden.Warden, float]:
    policy = _policy(tmp_path, ANOMALY_POLICY)
    with (
        lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as w,
        w.session("loader") as s,
    ):
        s.sql("CREATE TABLE loads (id BIGINT)")
        s.sql("CREATE TABLE young (id BIGINT)")
        for n in (100, 110, 90):
            s.sql(f"INSERT INTO young SELECT * FROM range({n})")
    # 30 days of synthetic hourly history, persisted in the state store, ending about an hour
    # before now; the warden opened after it trains on it like on any other history
    history = _hourly_loads(time.time(), days=30, seed=7)
    with lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(env={})) as w:
        StateStore.of(w.engine).save([], [], None, [("loads", r) for r in history])
    warden = lakewarden.open(lake_dir, policy=policy, telemetry=lakewarden.Telemetry(env={}))
    assert warden.tracker.writes("loads") == history
    return warden, history[-1].time


def test_volume_drop_is_flagged_against_30_days_of_history(history_lake) -> None:  # type: ignore[no-untyped-def]
    warden, _ = history_lake
    with warden.session("loader") as s:
        s.sql("INSERT INTO loads SELECT * FROM range(12)")  # 12 rows where ~10,000 are usual
    volume = warden.monitored()["loads"]["volume"]
    assert volume.result.anomalous and volume.result.score is not None
    assert volume.result.score < -4 and "drop" in volume.result.reason
    assert sample(
        warden, "lakewarden_table_volume_anomaly_score", db_collection_name="loads"
    ) == pytest.approx(volume.result.score)
    assert (
        sample(
            warden,
            "lakewarden_check_passing",
            db_collection_name="loads",
            lakewarden_check_name="volume_anomaly",
        )
        == 0
    )
    described = warden.describe("loads")["monitors"]["volume"]
    assert described["lower"] > 12 and len(described["history"]) == 48


def test_delay_is_flagged(history_lake) -> None:  # type: ignore[no-untyped-def]
    warden, last = history_lake
    warden.clock = Clock(last + 0.5 * HOUR)  # half an hour after the last load: fine
    fresh = warden.monitored()["loads"]["freshness"]
    assert fresh.result.score is not None and not fresh.result.anomalous
    warden.clock = Clock(last + 5 * HOUR)  # five hours without a load
    late = warden.monitored()["loads"]["freshness"]
    assert late.result.anomalous and late.result.score > 4  # type: ignore[operator]
    assert (
        sample(warden, "lakewarden_table_freshness_anomaly_score", db_collection_name="loads") > 4
    )


def test_short_history_flags_nothing_and_says_why(history_lake) -> None:  # type: ignore[no-untyped-def]
    warden, _ = history_lake
    volume = warden.monitored()["young"]["volume"]
    assert volume.result.score is None and not volume.result.anomalous
    assert "not enough history" in volume.result.reason and "2 of 14" in volume.result.reason
    scores = samples(warden, "lakewarden_table_volume_anomaly_score")
    assert not [k for k in scores if ("db_collection_name", "young") in k]


def test_clean_60_days_false_positive_rate(tmp_path: Path) -> None:
    from lakewarden.signals import monitoring
    from lakewarden.signals.anomaly import AnomalyRule

    rule = AnomalyRule(
        min_training=4, seasonality="hour_of_week", min_abs_change=1, min_rel_change=0.1
    )
    loads = _hourly_loads(time.time(), days=60, seed=11)
    monitor = monitoring.TableMonitor(rule, None)
    flagged = scored = 0
    for i, load in enumerate(loads):
        monitor.add(load)
        result = monitor.evaluate(load.time)["volume"].result
        if i >= 24 * 14 and result.score is not None:
            scored += 1
            flagged += result.anomalous
    assert scored == len(loads) - 24 * 14  # every hour after the first two weeks
    assert flagged / scored <= 0.01, f"false-positive rate {flagged / scored:.2%}"


EXTERNAL_WRITER = textwrap.dedent(
    """
    import sys, duckdb
    from lakewarden.store import extensions
    lake = sys.argv[1]
    con = duckdb.connect()
    extensions.load(con, "ducklake")
    extensions.load(con, "sqlite")
    con.execute(f"ATTACH 'ducklake:sqlite:{lake}/meta.sqlite' AS l (DATA_PATH '{lake}/data/')")
    con.execute("BEGIN")
    con.execute("INSERT INTO l.events SELECT i, CASE WHEN i % 2 = 0 THEN NULL ELSE 'x' END, "
                "TIMESTAMP '2026-11-27 10:00:00' + INTERVAL (i) MINUTE FROM range(40) t(i)")
    con.execute("CALL l.set_commit_message('dbt-run', 'nightly model build')")
    con.execute("COMMIT")
    con.execute("BEGIN")
    con.execute("ALTER TABLE l.events ADD COLUMN source VARCHAR")
    con.execute("CALL l.set_commit_message('dbt-run', 'add source column')")
    con.execute("COMMIT")
    """
)


def test_external_writer_is_picked_up_within_one_poll(
    tmp_path: Path, lake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = _policy(
        tmp_path,
        """\
        version: 1
        mode: enforce
        agents: {etl: {write: ["*"], ddl: true}}
        tables: {events: {event_time: happened_at, freshness_sla: 1h}}
    """,
    )
    settings = lakewarden.Settings(catalog="sqlite")
    with (
        lakewarden.open(lake_dir, settings=settings, telemetry=lakewarden.Telemetry(env={})) as w,
        w.session("etl") as s,
    ):
        s.sql("CREATE TABLE events (id BIGINT, kind VARCHAR, happened_at TIMESTAMP)")
        s.sql("INSERT INTO events VALUES (0, 'seed', TIMESTAMP '2026-11-27 09:00:00')")
    monkeypatch.setenv("LAKEWARDEN_POLL_INTERVAL_S", "0.5")
    with serve(lake_dir, policy=policy) as served:
        # A governed write and a truncated read first: neither may leave a lock on the shared
        # catalog that would make the other process's commit fail.
        agent = {AGENT_HEADER: "etl"}
        wrote = httpx.post(
            f"{served.url}/v1/sql",
            headers=agent,
            timeout=30,
            json={"sql": "INSERT INTO events VALUES (1, 'x', TIMESTAMP '2026-11-27 09:30:00')"},
        )
        assert wrote.status_code == 200, wrote.text
        read = httpx.post(
            f"{served.url}/v1/sql",
            headers=agent,
            timeout=30,
            json={"sql": "SELECT * FROM events", "max_rows": 1},
        )
        assert read.json()["truncated"] is True
        subprocess.run(
            [sys.executable, "-c", EXTERNAL_WRITER, str(lake_dir)],
            check=True,
            env=os.environ.copy(),
            timeout=120,
        )
        deadline = time.monotonic() + 5  # a few poll intervals, bounded
        while True:
            # metadata is shown to an agent whose read grants cover the table
            table = httpx.get(f"{served.url}/v1/tables/events", headers=agent, timeout=10).json()
            if "source" in [c["name"] for c in table["columns"]] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert table["rows"] == 42
    assert table["last_writer"] == "dbt-run"
    nulls = {c["name"]: c["null_count"] for c in table["columns"]}
    assert nulls == {"id": 0, "kind": 20, "happened_at": 0, "source": 42}
    assert table["schema_changes"] == {"column_added": 1}
    assert table["last_event_time"] == pytest.approx(
        __import__("datetime")
        .datetime(2026, 11, 27, 10, 39, tzinfo=__import__("datetime").UTC)
        .timestamp()
    )


# -- the poll asks the catalog for its newest snapshot only when its files changed ------------

SNAPSHOT_QUERY = "SELECT id FROM lake.current_snapshot()"


class Later:
    """Wall time moved on by ``ahead`` seconds: the catalog files look as old as they would."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


class QueryLog:
    """Counts the statements the engine ran, from DuckDB's own query log."""

    def __init__(self, warden: lakewarden.Warden) -> None:
        self._cur = warden.engine.cursor()
        self._cur.execute("CALL enable_logging('QueryLog')")

    def snapshot_queries(self) -> int:
        (count,) = self._cur.execute(
            "SELECT count(*) FROM duckdb_logs WHERE type = 'QueryLog' AND message = ?",
            [SNAPSHOT_QUERY],
        ).fetchall()[0]
        return int(count)


def _watched(warden: lakewarden.Warden) -> tuple[Monitor, Later, QueryLog]:
    """A monitor whose catalog watch reads a clock the test moves, and the engine's query log."""
    later = Later()
    warden.tracker.watch.clock = later
    return Monitor(warden, interval_s=5), later, QueryLog(warden)


def _quiet(monitor: Monitor, later: Later, log: QueryLog) -> None:
    """Let the catalog's files be quiet (as 3 s later), and one tick confirm that they are."""
    later.ahead += 3
    asked = log.snapshot_queries()
    monitor.tick()
    assert log.snapshot_queries() == asked + 1


def _sqlite_warden(lake_dir: Path) -> lakewarden.Warden:
    settings = lakewarden.Settings(catalog="sqlite")
    return lakewarden.open(lake_dir, settings=settings, telemetry=lakewarden.Telemetry(env={}))


def test_idle_ticks_ask_the_catalog_nothing_once_its_files_are_quiet(
    warden: lakewarden.Warden,
) -> None:
    with warden.session("etl") as s:
        s.sql("CREATE TABLE t (id BIGINT)")
        s.sql("INSERT INTO t VALUES (1)")
    monitor, later, log = _watched(warden)
    # just written: the files' times may not show a write in the same clock tick, so ask
    monitor.tick()
    monitor.tick()
    assert log.snapshot_queries() == 2
    _quiet(monitor, later, log)
    watch = warden.tracker.watch
    skipped = watch.skipped
    for _ in range(10):
        later.ahead += 5
        monitor.tick()
    assert log.snapshot_queries() == 3
    assert watch.skipped == skipped + 10
    # an explicit refresh still asks
    warden.refresh()
    assert log.snapshot_queries() == 4


@pytest.mark.parametrize("catalog", ["duckdb", "sqlite"])
def test_a_raw_commit_in_this_process_is_seen_by_the_next_tick(
    lake_dir: Path, catalog: str
) -> None:
    settings = lakewarden.Settings(catalog=catalog)
    with lakewarden.open(lake_dir, settings=settings, telemetry=lakewarden.Telemetry(env={})) as w:
        with w.session("etl") as s:
            s.sql("CREATE TABLE t (id BIGINT)")
            s.sql("INSERT INTO t VALUES (1)")
        monitor, later, log = _watched(w)
        _quiet(monitor, later, log)
        monitor.tick()
        asked = log.snapshot_queries()
        # on the engine's own connection, past lakewarden's write path (no queued commit)
        raw = w.engine.cursor()
        raw.execute("INSERT INTO t VALUES (2), (3)")
        later.ahead += 5
        monitor.tick()
        assert log.snapshot_queries() == asked + 1
        assert w.table("t").rows == 3
        assert w.table("t").last_writer == "unknown"


def test_a_commit_of_lakewarden_makes_the_next_tick_ask(warden: lakewarden.Warden) -> None:
    with warden.session("etl") as s:
        s.sql("CREATE TABLE t (id BIGINT)")
    monitor, later, log = _watched(warden)
    _quiet(monitor, later, log)
    with warden.session("etl") as s:
        s.sql("INSERT INTO t VALUES (1)")
    assert warden.tracker.watch.look() is not None  # invalidated by the commit itself
    later.ahead += 5
    monitor.tick()
    assert warden.table("t").rows == 1


def test_another_process_commit_to_a_sqlite_catalog_is_seen_by_the_next_tick(
    lake_dir: Path,
) -> None:
    with _sqlite_warden(lake_dir) as w:
        with w.session("etl") as s:
            s.sql("CREATE TABLE events (id BIGINT, kind VARCHAR, happened_at TIMESTAMP)")
            s.sql("INSERT INTO events VALUES (0, 'seed', TIMESTAMP '2026-11-27 09:00:00')")
        monitor, later, log = _watched(w)
        _quiet(monitor, later, log)
        monitor.tick()
        asked = log.snapshot_queries()
        subprocess.run(
            [sys.executable, "-c", EXTERNAL_WRITER, str(lake_dir)],
            check=True,
            env=os.environ.copy(),
            timeout=120,
        )
        later.ahead += 5
        monitor.tick()
        assert log.snapshot_queries() == asked + 1
        table = w.table("events")
        assert table.rows == 41
        assert table.last_writer == "dbt-run"
        assert "source" in table.schema


def test_the_catalog_is_asked_at_least_once_a_minute(lake_dir: Path) -> None:
    with _sqlite_warden(lake_dir) as w:
        with w.session("etl") as s:
            s.sql("CREATE TABLE t (id BIGINT)")
        monitor, later, log = _watched(w)
        _quiet(monitor, later, log)
        asked = log.snapshot_queries()
        later.ahead += 59
        monitor.tick()
        assert log.snapshot_queries() == asked  # the files look the same: not asked
        later.ahead += 2  # a minute since the catalog last answered
        monitor.tick()
        assert log.snapshot_queries() == asked + 1
        monitor.tick()
        assert log.snapshot_queries() == asked + 1  # and trusted again from there
        later.ahead -= 600  # a clock that jumps back: ask
        monitor.tick()
        assert log.snapshot_queries() == asked + 2


def test_a_commit_the_files_hide_is_seen_within_a_minute(lake_dir: Path) -> None:
    """What a file system with cached attributes does: the commit leaves the files looking the
    same. The minute bound is then the whole delay."""
    with _sqlite_warden(lake_dir) as w:
        with w.session("etl") as s:
            s.sql("CREATE TABLE t (id BIGINT)")
            s.sql("INSERT INTO t VALUES (1)")
        monitor, later, log = _watched(w)
        _quiet(monitor, later, log)
        meta = lake_dir / "meta.sqlite"
        before = os.stat(meta)
        w.engine.cursor().execute("INSERT INTO t VALUES (2)")
        after = os.stat(meta)
        if after.st_size != before.st_size:
            pytest.skip("the commit grew the catalog file; its size cannot be hidden")
        os.utime(meta, ns=(after.st_atime_ns, before.st_mtime_ns))
        later.ahead += 30
        monitor.tick()
        assert w.table("t").rows == 1  # not seen yet
        later.ahead += 31
        monitor.tick()
        assert w.table("t").rows == 2


def test_a_catalog_without_a_local_file_is_asked_on_every_poll(tmp_path: Path) -> None:
    from lakewarden.store.snapshot_watch import SnapshotWatch

    watch = SnapshotWatch(None)
    for _ in range(3):
        look = watch.look()
        assert look is not None
        watch.confirm(look)
    # a file that is not quiet yet is not trusted either; once quiet it is
    path = tmp_path / "meta.sqlite"
    path.write_bytes(b"x")
    later = Later()
    watch = SnapshotWatch([path, path.with_name("meta.sqlite-journal")], clock=later)
    look = watch.look()
    assert look is not None
    watch.confirm(look)
    assert watch.look() is not None
    later.ahead = 3
    look = watch.look()
    assert look is not None
    watch.confirm(look)
    assert watch.look() is None
    watch.invalidate()
    assert watch.look() is not None


def test_an_idle_table_keeps_its_anomaly_finding_from_poll_to_poll(history_lake) -> None:  # type: ignore[no-untyped-def]
    warden, last = history_lake
    clock = Clock(last + 600)
    warden.clock = clock

    def finding(check: str, table: str | None = None) -> Finding:
        (found,) = [f for f in warden.checks(table)["loads"] if f.check == check]
        return found

    volume, freshness = finding("volume_anomaly"), finding("freshness_anomaly")
    clock.now += 5  # the next poll: nothing written
    assert finding("volume_anomaly") is volume
    assert finding("volume_anomaly", "loads") is volume
    assert finding("freshness_anomaly").measured == pytest.approx(freshness.measured + 5, abs=0.002)
    with warden.session("loader") as s:
        s.sql("INSERT INTO loads SELECT * FROM range(12)")
    clock.now += 5
    after = finding("volume_anomaly")
    assert after is not volume and not after.passing


def test_a_failing_catch_up_is_logged_when_it_starts_and_when_it_ends(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A catalog outage fails every tick's catch-up: one line for the outage, not one a tick."""
    import logging

    with lakewarden.open(lake_dir) as warden:
        outage = {"on": True}
        refresh = warden.refresh

        def flaky(*, poll: bool = False) -> None:
            if outage["on"]:
                raise lakewarden.Unavailable("the lake's PostgreSQL catalog cannot be reached")
            refresh(poll=poll)

        monkeypatch.setattr(warden, "refresh", flaky)
        monitor = Monitor(warden, interval_s=1)
        caplog.set_level(logging.INFO, logger="lakewarden.core.monitor")
        for _ in range(5):
            monitor.tick()
        outage["on"] = False
        monitor.tick()
        monitor.tick()
    lines = [r.getMessage() for r in caplog.records if r.name == "lakewarden.core.monitor"]
    assert [line.split(" (")[0] for line in lines] == [
        "could not pick up new commits",
        "could pick up new commits again",
    ]
    assert "cannot be reached" in lines[0]
