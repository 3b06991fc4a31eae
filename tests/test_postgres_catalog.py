"""A lake whose DuckLake catalog is a real PostgreSQL database: governed reads and writes,
several processes on one lake, conflicts as retryable errors, and bad catalog input refused at
start-up with what to fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from benchmarks.services import S3, Postgres

import lakewarden
from lakewarden.wire import AGENT_HEADER

from server_helpers import free_port, serve_process


@pytest.fixture
def s3_env(s3: S3, pg_env: Postgres, monkeypatch: pytest.MonkeyPatch) -> S3:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture
def pg_env(pg: Postgres, monkeypatch: pytest.MonkeyPatch) -> Postgres:
    monkeypatch.setenv("PGPASSWORD", pg.password)
    return pg


def open_pg(pg: Postgres, dbname: str, data: Path, **kw: object) -> lakewarden.Warden:
    return lakewarden.open(f"postgres:{pg.dsn(dbname)}", data_path=data, **kw)  # type: ignore[arg-type]


def test_governed_reads_and_writes_on_a_postgres_catalog(pg_env: Postgres, tmp_path: Path) -> None:
    db = pg_env.new_database()
    warden = open_pg(pg_env, db, tmp_path / "data")
    try:
        with warden.session(agent="etl") as s:
            s.sql("CREATE TABLE orders (id BIGINT, email VARCHAR)")
            r = s.sql("INSERT INTO orders VALUES (1, 'a@x'), (2, NULL)")
            assert r.rows_affected == 2
            assert r.signals["orders"].state.rows == 2
            assert s.sql("SELECT count(*) AS n FROM orders").pl()["n"][0] == 2
        snap = warden.snapshots("orders", 1)[0]
        assert (snap.snapshot_id, snap.agent, snap.message) == (
            r.snapshot_id,
            "etl",
            "INSERT orders",
        )
        assert snap.trace_id == r.trace_id
        assert warden.table("orders").columns[1].null_count == 1
    finally:
        warden.close()
    # The catalog lives in PostgreSQL: it is there for the next process, authors included.
    rows = pg_env.psql("SELECT author FROM ducklake_snapshot_changes WHERE author IS NOT NULL", db)
    assert {"etl"} <= set(rows.split()) <= {"etl", "lakewarden"}  # lakewarden: its audit table
    again = open_pg(pg_env, db, tmp_path / "data")
    try:
        assert again.table("orders").rows == 2
    finally:
        again.close()


ATTACKS = [
    ("postgres_query", "SELECT * FROM postgres_query('__ducklake_metadata_lake', 'SELECT 1')"),
    ("metadata_read", "SELECT * FROM __ducklake_metadata_lake.public.ducklake_snapshot"),
    (
        "metadata_write",
        "UPDATE __ducklake_metadata_lake.public.ducklake_snapshot_changes SET author = 'x'",
    ),
    ("postgres_execute", "CALL postgres_execute('__ducklake_metadata_lake', 'DROP TABLE x')"),
    (
        "postgres_scan",
        "SELECT * FROM postgres_scan('host=127.0.0.1', 'public', 'ducklake_snapshot')",
    ),
    ("attach", "ATTACH 'postgres:dbname=postgres host=127.0.0.1' AS p"),
]


@pytest.mark.parametrize(("sql"), [a[1] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_agents_cannot_reach_the_catalog_database(
    pg_env: Postgres, tmp_path: Path, sql: str
) -> None:
    warden = open_pg(pg_env, pg_env.new_database(), tmp_path / "data")
    try:
        with warden.session(agent="attacker") as s, pytest.raises(lakewarden.PolicyDenied):
            s.sql(sql)
        assert (
            pg_env.psql(
                "SELECT count(*) FROM ducklake_snapshot_changes WHERE author = 'x'",
                warden.engine.location.namespace,
            ).strip()
            == "0"
        )
    finally:
        warden.close()


def test_a_conflicting_commit_is_a_retryable_conflict_and_commits_nothing(
    pg_env: Postgres, tmp_path: Path
) -> None:
    """A writer outside lakewarden (a plain DuckDB job on the same lake) deletes rows while a
    governed transaction is open: the governed commit loses, the agent is told to retry,
    nothing of it was committed, and the retry works."""
    db = pg_env.new_database()
    warden = open_pg(pg_env, db, tmp_path / "data")
    other = open_pg(pg_env, db, tmp_path / "data")
    outsider = other.engine.cursor()  # a raw cursor takes no lock
    try:
        with warden.session(agent="a") as s:
            s.sql("CREATE TABLE t (id BIGINT)")
            s.sql("INSERT INTO t VALUES (1), (2)")
        with (
            warden.session(agent="b") as s,
            pytest.raises(lakewarden.Conflict) as caught,
            s.transaction(),
        ):
            s.sql("INSERT INTO t VALUES (3)")
            outsider.execute("DELETE FROM t WHERE id = 1")
        assert caught.value.retryable and caught.value.to_dict()["retryable"] is True
        assert caught.value.violations[0].rule == "write_conflict"
        with warden.session(agent="b") as s:
            assert s.sql("SELECT id FROM t ORDER BY id").pl()["id"].to_list() == [2]
            s.sql("INSERT INTO t VALUES (3)")  # the retry
            assert s.sql("SELECT id FROM t ORDER BY id").pl()["id"].to_list() == [2, 3]
        authors = [snap.agent for snap in warden.snapshots("t", 10)]
        assert authors[0] == "b" and "b" not in authors[1:]
    finally:
        outsider.close()
        other.close()
        warden.close()


def test_a_write_waits_for_another_sidecars_write_then_is_told_to_retry(
    pg_env: Postgres, tmp_path: Path
) -> None:
    """The fleet's write lock: a sidecar whose write waits longer than its statement limit
    for another sidecar's open transaction gets a retryable conflict, nothing committed."""
    db = pg_env.new_database()
    quick = lakewarden.Settings(statement_timeout_s=1)
    first = open_pg(pg_env, db, tmp_path / "data")
    second = open_pg(pg_env, db, tmp_path / "data", settings=quick)
    try:
        with first.session(agent="a") as s:
            s.sql("CREATE TABLE t (id BIGINT)")
        with first.session(agent="a") as s, s.transaction():
            s.sql("INSERT INTO t VALUES (1)")
            with second.session(agent="b") as other, pytest.raises(lakewarden.Conflict) as caught:
                other.sql("INSERT INTO t VALUES (2)")
        assert caught.value.retryable
        assert caught.value.violations[0].rule == "write_lock_timeout"
        with second.session(agent="b") as other:
            other.sql("INSERT INTO t VALUES (2)")
            assert other.sql("SELECT id FROM t ORDER BY id").pl()["id"].to_list() == [1, 2]
    finally:
        first.close()
        second.close()


def _insert_many(url: str, agent: str, ids: list[int], acked: list[int], errors: list[str]) -> None:
    with httpx.Client(base_url=url, headers={AGENT_HEADER: agent}, timeout=60) as http:
        for key in ids:
            for _ in range(20):
                response = http.post(
                    "/v1/sql", json={"sql": "INSERT INTO t VALUES (?, ?)", "params": [key, agent]}
                )
                if response.status_code == 200:
                    acked.append(key)
                    break
                body = response.json()["error"]
                if not (response.status_code == 409 and body.get("retryable")):
                    errors.append(f"{response.status_code} {body}")
                    break
            if key % 5 == 0:
                response = http.post("/v1/sql", json={"sql": "SELECT count(*) FROM t"})
                if response.status_code != 200:
                    errors.append(f"read {response.status_code} {response.text[:200]}")


def test_two_server_processes_share_one_lake(pg_env: Postgres, tmp_path: Path) -> None:
    """Two ``lakewarden serve`` processes on one PostgreSQL catalog and one data folder, agents
    writing through both at once: every acknowledged write is in the lake exactly once, every
    snapshot names its author, and each server's gauges show the other's commits."""
    pg = pg_env
    db = pg.new_database()
    data = tmp_path / "data"
    env = {**pg.env(), "LAKEWARDEN_DATA_PATH": str(data), "LAKEWARDEN_POLL_INTERVAL_S": "0.5"}
    ports = [free_port(), free_port()]
    setup = open_pg(pg, db, data, settings=lakewarden.Settings(data_path=str(data)))
    with setup.session(agent="admin") as s:
        s.sql("CREATE TABLE t (id BIGINT, who VARCHAR)")
    setup.close()
    logs = [(tmp_path / f"server-{port}.log").open("w") for port in ports]
    procs = [
        serve_process(["--lake", f"postgres:{pg.dsn(db)}", "--port", str(port)], env, stderr=log)
        for port, log in zip(ports, logs, strict=True)
    ]
    try:
        acked: list[int] = []
        errors: list[str] = []
        threads = [
            threading.Thread(
                target=_insert_many,
                args=(
                    f"http://127.0.0.1:{ports[k % 2]}",
                    f"agent-{k}",
                    list(range(k * 1000, k * 1000 + 15)),
                    acked,
                    errors,
                ),
            )
            for k in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(acked) == 60
        ids = [int(x) for x in pg_query_ids(pg, db, data)]
        assert sorted(ids) == sorted(acked)  # each exactly once
        authors = pg.psql(
            "SELECT count(*) FROM ducklake_snapshot_changes"
            " WHERE snapshot_id > 1 AND author IS NULL",
            db,
        )
        assert authors.strip() == "0"
        # Within a poll interval or two, both servers count every row, the other's included.
        for port in ports:
            assert _gauge_settles(f"http://127.0.0.1:{port}", 60.0)
        # A sidecar counts the rows its own agents wrote, not the others' (so dashboards sum
        # them): across the fleet the counters add up to the rows in the table.
        written = [
            _metric_sum(f"http://127.0.0.1:{port}", "lakewarden_rows_written_total")
            for port in ports
        ]
        assert sum(written) == 60 and all(w > 0 for w in written), written
        for port in ports:
            logged = (tmp_path / f"server-{port}.log").read_text()
            assert "Traceback" not in logged, logged
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        for log in logs:
            log.close()


def pg_query_ids(pg: Postgres, db: str, data: Path) -> list[str]:
    """The ids in the table, read by a plain engine in another process (not by a server)."""
    code = (
        "import sys, lakewarden\n"
        f"w = lakewarden.open(sys.argv[1], data_path={str(data)!r})\n"
        "with w.session(agent='check') as s:\n"
        "    print('\\n'.join(str(i) for i in s.sql('SELECT id FROM t').pl()['id']))\n"
        "w.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, f"postgres:{pg.dsn(db)}"],
        env=pg.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _metric_sum(url: str, name: str, table: str = "t") -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and f'db_collection_name="{table}"' in line
    )


def _gauge_settles(url: str, expected: float, timeout_s: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(url + "/metrics", timeout=5).text
        for line in text.splitlines():
            if (
                line.startswith("lakewarden_table_rows{")
                and 'db_collection_name="t"' in line
                and float(line.rsplit(" ", 1)[1]) == expected
            ):
                return True
        time.sleep(0.25)
    return False


BAD = [
    ("wrong_password", {"password": "not-it"}, "password authentication failed", "PGPASSWORD"),
    ("no_server", {"port": "1"}, "Connection refused", "host= and port="),
    ("no_database", {"dbname": "nosuch"}, 'database "nosuch" does not exist', "dbname="),
]


@pytest.mark.parametrize(("change", "reason", "fix"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_catalog_input_fails_at_start_up_and_creates_nothing(
    pg: Postgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, str],
    reason: str,
    fix: str,
) -> None:
    monkeypatch.setenv("PGPASSWORD", change.get("password", pg.password))
    db = change.get("dbname") or pg.new_database()
    dsn = pg.dsn(db, user=change.get("user", "lakewarden"), port=int(change.get("port", pg.port)))
    data = tmp_path / "data"
    with pytest.raises(lakewarden.ConfigurationError) as caught:
        lakewarden.open(f"postgres:{dsn}", data_path=data)
    message = caught.value.message
    assert reason in message and fix in message
    assert pg.password not in message and "not-it" not in message
    assert not data.exists()  # nothing created half-way
    if "dbname" not in change:
        assert (
            pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", db).strip() == "0"
        )


@pytest.mark.parametrize(
    ("lake", "data_path", "expected"),
    [
        ("postgres:dbname=x password=secret host=h", "d", "PGPASSWORD"),
        ("postgres:postgresql://u:secret@h/x", "d", "PGPASSWORD"),
        ("postgres:", "d", "needs a connection string"),
        ("postgres:dbname=x host=h", None, "--data-path"),
    ],
    ids=["password_keyword", "password_uri", "empty", "no_data_path"],
)
def test_malformed_postgres_lakes_are_refused(
    lake: str, data_path: str | None, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAKEWARDEN_DATA_PATH", raising=False)
    with pytest.raises(lakewarden.ConfigurationError) as caught:
        lakewarden.open(lake, data_path=tmp_path / data_path if data_path else None)
    assert expected in caught.value.message
    assert "secret" not in caught.value.message


def test_the_cli_names_the_fix_and_exits_2(pg: Postgres, tmp_path: Path) -> None:
    db = pg.new_database()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lakewarden.intake.cli",
            "serve",
            "--lake",
            f"postgres:{pg.dsn(db)}",
            "--data-path",
            str(tmp_path / "data"),
            "--port",
            str(free_port()),
        ],
        env=pg.env("wrong"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "password authentication failed" in done.stderr and "PGPASSWORD" in done.stderr
    assert pg.password not in done.stderr + done.stdout
    snapshots = subprocess.run(
        [
            sys.executable,
            "-m",
            "lakewarden.intake.cli",
            "snapshots",
            "--lake",
            f"postgres:{pg.dsn(db)}",
            "--data-path",
            str(tmp_path / "data"),
            "--json",
        ],
        env=pg.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert snapshots.returncode == 0, snapshots.stderr
    assert isinstance(json.loads(snapshots.stdout), list)
    assert os.path.isdir(tmp_path / "data")


def test_data_in_object_storage(pg_env: Postgres, s3_env: S3) -> None:
    """The catalog in PostgreSQL, the data files in an S3 bucket: governed writes land there,
    and an agent still reaches nothing outside the lake's prefix."""
    bucket = s3_env.new_bucket()
    s3_env.client().put_object(Bucket=bucket, Key="elsewhere/secret.csv", Body=b"a\n1\n")
    db = pg_env.new_database()
    url = f"s3://{bucket}/lake"
    warden = lakewarden.open(f"postgres:{pg_env.dsn(db)}", data_path=url)
    try:
        assert warden.engine.location.data == url + "/"
        with warden.session(agent="etl") as s:
            s.sql("CREATE TABLE events (id BIGINT, kind VARCHAR)")
            r = s.sql("INSERT INTO events SELECT range, 'k' || (range % 3) FROM range(5000)")
            assert r.rows_affected == 5000 and r.signals["events"].state.rows == 5000
            assert s.sql("SELECT count(*) AS n FROM events").pl()["n"][0] == 5000
            for attack in (
                f"SELECT * FROM read_csv('s3://{bucket}/elsewhere/secret.csv')",
                f"SELECT * FROM read_parquet('s3://{bucket}/lake/**/*.parquet')",
                "SELECT * FROM duckdb_secrets()",
                "SELECT current_setting('s3_secret_access_key')",
            ):
                with pytest.raises(lakewarden.PolicyDenied):
                    s.sql(attack)
        keys = s3_env.keys(bucket)
        assert any(k.startswith("lake/") and k.endswith(".parquet") for k in keys), keys
    finally:
        warden.close()


def test_a_missing_bucket_fails_at_start_up_and_creates_nothing(
    pg_env: Postgres, s3_env: S3
) -> None:
    db = pg_env.new_database()
    with pytest.raises(lakewarden.ConfigurationError) as caught:
        lakewarden.open(f"postgres:{pg_env.dsn(db)}", data_path="s3://no-such-bucket/lake")
    assert "no-such-bucket" in caught.value.message
    assert "create it first" in caught.value.message
    assert "lakewarden-test-secret" not in caught.value.message
    assert (
        pg_env.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", db).strip() == "0"
    )


RACE_POLICY = """
version: 1
mode: enforce
agents:
  writer-a: {read: ["*"], write: ["*"], ddl: true}
  writer-b: {read: ["*"], write: ["*"], ddl: true}
tables:
  contacts:
    columns: {email: {max_null_ratio: 0.3}}
"""


def test_two_sidecars_racing_cannot_break_a_contract_together(
    pg_env: Postgres, tmp_path: Path
) -> None:
    """Each sidecar's writes would pass the gate alone (a few nulls each) but not together:
    the fleet's write lock makes every gated write start on, and be judged on, the lake with
    the other's commits in it, so no committed snapshot ever breaks the contract."""
    from lakewarden.governance.policy import parse_policy

    policy = parse_policy(RACE_POLICY)
    db = pg_env.new_database()
    sidecars = [open_pg(pg_env, db, tmp_path / "data", policy=policy) for _ in range(2)]
    try:
        with sidecars[0].session(agent="writer-a") as s:
            s.sql("CREATE TABLE contacts (id BIGINT, email VARCHAR)")
            s.sql("INSERT INTO contacts SELECT range, 'x@y' FROM range(20)")
        outcomes: dict[str, int] = {"committed": 0, "blocked": 0}
        errors: list[str] = []
        lock = threading.Lock()

        def writer(k: int) -> None:
            warden = sidecars[k % 2]
            agent = "writer-a" if k % 2 == 0 else "writer-b"
            with warden.session(agent=agent) as s:
                for i in range(12):
                    # 3 nulls in 4 rows: ratio 0.3 is crossed after a few such writes
                    base = 1_000 * (k + 1) + 10 * i
                    sql = (
                        f"INSERT INTO contacts VALUES ({base}, NULL), ({base + 1}, NULL), "
                        f"({base + 2}, NULL), ({base + 3}, 'ok@y')"
                        if i % 2 == 0
                        else f"INSERT INTO contacts VALUES ({base}, 'v@y'), ({base + 1}, 'w@y')"
                    )
                    try:
                        s.sql(sql)
                        result = "committed"
                    except lakewarden.QualityGateFailed:
                        result = "blocked"
                    except lakewarden.LakewardenError as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    with lock:
                        outcomes[result] += 1

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert outcomes["committed"] > 0 and outcomes["blocked"] > 0, outcomes
        versions = [snap.snapshot_id for snap in sidecars[0].snapshots("contacts", 1000)]
        assert len(versions) > outcomes["committed"]
        cur = sidecars[0].engine.cursor()  # the check reads every version, raw
        worst = 0.0
        for version in versions:
            ((nulls, rows),) = cur.execute(
                "SELECT count(*) FILTER (WHERE email IS NULL), count(*) "
                f"FROM contacts AT (VERSION => {version})"
            ).fetchall()
            worst = max(worst, nulls / rows if rows else 0.0)
        cur.close()
        assert worst <= 0.3, f"a committed snapshot broke the contract: null ratio {worst}"
    finally:
        for warden in sidecars:
            warden.close()


def test_a_new_sidecar_catches_up_from_the_shared_state_without_a_rescan(
    pg_env: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """State lives in the catalog database: a sidecar starting on a fresh machine loads it
    and replays only the commits after it, and profiles no table."""
    from lakewarden.store import catalog

    db = pg_env.new_database()
    first = open_pg(pg_env, db, tmp_path / "data")
    try:
        with first.session(agent="etl") as s:
            s.sql("CREATE TABLE big (id BIGINT, note VARCHAR)")
            s.sql(
                "INSERT INTO big SELECT range, CASE WHEN range % 4 <> 0 THEN 'n' END "
                "FROM range(5000)"
            )
            s.sql("CREATE TABLE small (id BIGINT)")
            s.sql("INSERT INTO small VALUES (1), (2)")
    finally:
        first.close()  # saves its state, in PostgreSQL
    assert "big" in pg_env.psql("SELECT name FROM lakewarden.table_state", db)
    # Another sidecar commits after the saved state; the newcomer must replay it.
    second = open_pg(pg_env, db, tmp_path / "data")
    with second.session(agent="etl") as s:
        s.sql("INSERT INTO small VALUES (3)")
    profiled: list[str] = []
    real = catalog.profile

    def counting(cur, table, *args, **kwargs):  # type: ignore[no-untyped-def]
        profiled.append(table)
        return real(cur, table, *args, **kwargs)

    monkeypatch.setattr(catalog, "profile", counting)
    newcomer = open_pg(pg_env, db, tmp_path / "data")
    try:
        newcomer.refresh()
        assert newcomer.table("small").rows == 3
        big = newcomer.table("big")
        assert big.rows == 5000 and big.columns[1].null_count == 1250
        assert profiled == []
    finally:
        newcomer.close()
        second.close()


def test_sidecars_starting_together_on_a_new_catalog_take_turns(
    pg_env: Postgres, tmp_path: Path
) -> None:
    """The first ATTACH of a new catalog creates DuckLake's tables, and the first sidecar its
    state tables: three processes started at once on an empty database all come up."""
    from server_helpers import wait_ready

    db = pg_env.new_database()
    env = {**pg_env.env(), "LAKEWARDEN_DATA_PATH": str(tmp_path / "data")}
    ports = [free_port() for _ in range(3)]
    logs = [(tmp_path / f"{port}.log").open("w") for port in ports]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lakewarden.intake.cli",
                "serve",
                "--lake",
                f"postgres:{pg_env.dsn(db)}",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
        for port, log in zip(ports, logs, strict=True)
    ]
    try:
        for port, proc in zip(ports, procs, strict=True):
            wait_ready(f"http://127.0.0.1:{port}", proc)
        for port in ports:
            assert "Traceback" not in (tmp_path / f"{port}.log").read_text()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        for log in logs:
            log.close()


def test_a_conflict_is_a_retryable_409_through_rest_and_the_same_code_through_mcp() -> None:
    import json as json_module

    from lakewarden.intake import mcp as mcp_door
    from lakewarden.intake.caller import Failure

    error = lakewarden.Conflict("lost to another commit", [])
    failure = Failure.of(error, "trace")
    assert failure.status == 409
    assert failure.body["error"]["code"] == "conflict"
    assert failure.body["error"]["retryable"] is True
    result = mcp_door._error(failure)
    assert result.is_error
    body = json_module.loads(result.content[0].text)
    assert body["error"]["code"] == "conflict" and body["error"]["retryable"] is True


HOSTILE_NAMES = [
    "x'); DROP SCHEMA lakewarden CASCADE; --",
    "it''s quoted twice'",
    'dollar$$quote"double',
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=["injection", "quotes", "dollar"])
def test_hostile_table_names_reach_the_shared_state_as_data(
    pg_env: Postgres, tmp_path: Path, name: str
) -> None:
    """Table names are the agents' to choose (with DDL rights) and are written into the shared
    state's SQL as literals: they must arrive as data, and the state tables stay whole."""
    db = pg_env.new_database()
    warden = open_pg(pg_env, db, tmp_path / "data")
    quoted = '"' + name.replace('"', '""') + '"'
    try:
        with warden.session(agent="etl") as s:
            s.sql(f"CREATE TABLE {quoted} (id BIGINT)")
            s.sql(f"INSERT INTO {quoted} VALUES (1), (2)")
    finally:
        warden.close()
    saved = pg_env.psql("SELECT name FROM lakewarden.table_state", db).splitlines()
    assert name.lower() in saved
    assert pg_env.psql("SELECT count(*) FROM lakewarden.meta", db).strip() == "1"
    again = open_pg(pg_env, db, tmp_path / "data")
    try:
        assert again.table(name.lower()).rows == 2
    finally:
        again.close()


def test_the_password_can_come_from_a_pgpassfile(
    pg: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg.port}:*:lakewarden:{pg.password}\n")
    passfile.chmod(0o600)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    warden = open_pg(pg, pg.new_database(), tmp_path / "data")
    warden.close()


def test_racing_state_saves_of_two_sidecars_all_land(pg_env: Postgres, tmp_path: Path) -> None:
    """Shared-state saves of the same table from two sidecars at once: each lands, none fails
    with PostgreSQL's "could not serialize access" (a save's snapshot predates its lock)."""
    from lakewarden.signals.table_state import TableState
    from lakewarden.store.state import StateStore

    db, data = pg_env.new_database(), tmp_path / "data"
    data.mkdir()
    wardens = [open_pg(pg_env, db, data) for _ in range(2)]
    try:
        stores = [StateStore.of(w.engine) for w in wardens]
        failures: list[BaseException] = []

        def saver(store: StateStore, offset: int) -> None:
            try:
                for i in range(40):
                    store.save([TableState(name="main.t", rows=offset + i)], [], offset + i)
            except BaseException as exc:  # the assertion below names it
                failures.append(exc)

        threads = [threading.Thread(target=saver, args=(s, n * 1000)) for n, s in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert stores[0].load()[0]["main.t"].rows in (39, 1039)
    finally:
        for w in wardens:
            w.close()
