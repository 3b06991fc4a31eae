"""The hardened DuckDB connection behind a lake.

Order matters (measured with duckdb 1.5.5): extensions are LOADed and the lake ATTACHed first,
then the lake's own folder is the only allowed directory, then external access goes off, then
the configuration is locked so no statement can undo any of it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.lib

from lakewarden.errors import ConfigurationError, ExecutionError
from lakewarden.settings import POSTGRES_PREFIX, Settings
from lakewarden.store import extensions, faults, objectstore
from lakewarden.store.deadline import WATCHDOG
from lakewarden.store.writelock import WriteLock

log = logging.getLogger(__name__)

# Measured with duckdb 1.5.5: when pandas is not installed, every execute() with bound
# parameters tries `import pandas` again and pays a full search of sys.path for it (about 0.5 ms
# per statement). Recording the absence once makes the failed import instant; with pandas
# installed nothing changes. pyarrow must look for pandas first: its check, done once and
# cached, takes a None entry for a module and then fails on every TIMESTAMPTZ value.
if importlib.util.find_spec("pandas") is None:
    _ = pyarrow.lib._pandas_api.have_pandas
    sys.modules.setdefault("pandas", None)  # type: ignore[arg-type]

LAKE_ALIAS = "lake"
STATE_ALIAS = "lw_state"
# The catalog database of a postgres lake, attached to the state instance (never to agents').
CATALOG_ALIAS = "lw_catalog"
SHARED_SCHEMA = "lakewarden"  # lakewarden's shared state, in the catalog database
_CATALOG_FILES = {"duckdb": "meta.ducklake", "sqlite": "meta.sqlite"}
# What a commit writes besides the catalog file itself: DuckDB's write-ahead log; SQLite's
# rollback journal or, in WAL mode, its write-ahead log.
_CATALOG_COMPANIONS = {"duckdb": (".wal",), "sqlite": ("-journal", "-wal")}
_DUCKDB_SUFFIXES = (".duckdb", ".db", ".ddb")
# DuckDB checkpoints a database file inside the commit that takes its write-ahead log past
# ``checkpoint_threshold``. Measured with duckdb 1.5.5 on a full device: that checkpoint fails,
# and the commit, durable in the log, raises "FATAL Error: Transaction COMMIT succeeded and is
# durable, but the autocheckpoint failed" and the database refuses every later statement until
# it is reopened: a committed write reported as failed (the agent sends it again: twice in the
# lake) and a lake that is down. So no commit checkpoints: :meth:`Engine.checkpoint` does, off
# the agents' path, when the device has room for it.
_NO_AUTOCHECKPOINT = "1000TB"
# DuckDB's own threshold, kept as the size past which lakewarden checkpoints a log.
CHECKPOINT_WAL_BYTES = 16 * 2**20
# A checkpoint writes at most the database's blocks again, beside the old ones until it is done.
_CHECKPOINT_HEADROOM_BYTES = 64 * 2**20
# A password in the connection string would sit in the process list, shell histories and logs:
# libpq reads it from PGPASSWORD or a PGPASSFILE instead. Keyword form ``password=...`` and URI
# form ``postgresql://user:secret@host``.
_DSN_PASSWORD = re.compile(r"(?:^|\s)password\s*=|^postgres(?:ql)?://[^/@]*:[^/@]*@", re.IGNORECASE)
_DSN_DBNAME = re.compile(r"(?:^|\s)dbname\s*=\s*'?([^'\s]+)", re.IGNORECASE)
_URI_DBNAME = re.compile(r"^postgres(?:ql)?://[^/]*/([^?]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Location:
    """Where a lake lives: a DuckLake folder (``is_lake``), a plain DuckDB file, or a DuckLake
    whose catalog is a PostgreSQL database (``dsn``) and whose data files are under ``path``."""

    path: Path
    is_lake: bool
    catalog: str  # duckdb | sqlite | postgres for a lake; "file" for a plain DuckDB file
    dsn: str | None = None  # the PostgreSQL connection string of a postgres catalog
    # s3://bucket/prefix/ of a postgres lake's data files in object storage; ``path`` is then
    # only the local folder for the engine's spill files.
    data_url: str | None = None

    @property
    def data_path(self) -> Path:
        """The local folder of the lake's data files (when they are not in object storage)."""
        return self.path if self.catalog == "postgres" else self.path / "data"

    @property
    def data(self) -> str:
        """Where the lake's data files are, as DATA_PATH takes it: the only place the engine
        may read or write."""
        return self.data_url or str(self.data_path) + "/"

    @property
    def exclusive(self) -> bool:
        """Whether one process holds the lake: a DuckDB-file catalog admits no other, so no
        commit can land between a transaction's snapshot and its commit but this process's."""
        return self.is_lake and self.catalog == "duckdb"

    @property
    def catalog_files(self) -> tuple[Path, ...] | None:
        """The local files every commit to the lake's catalog writes; None when there are
        none to watch (a plain DuckDB file, or a catalog that is not a local file)."""
        if not self.is_lake or self.catalog not in _CATALOG_FILES:
            return None
        meta = self.path / _CATALOG_FILES[self.catalog]
        companions = _CATALOG_COMPANIONS[self.catalog]
        return (meta, *(meta.with_name(meta.name + suffix) for suffix in companions))

    @property
    def state_path(self) -> Path | None:
        """lakewarden's own state file; None when the state is kept in memory (a lake shared
        by sidecars on several machines has no folder of its own to keep it in)."""
        if self.catalog == "postgres":
            return None
        if self.is_lake:
            return self.path / "lakewarden-state.duckdb"
        return self.path.with_name(self.path.stem + ".lakewarden-state.duckdb")

    @property
    def namespace(self) -> str:
        """``db.namespace`` of the spans: the folder or file name, or the catalog database's."""
        if self.dsn is not None:
            match = _DSN_DBNAME.search(self.dsn) or _URI_DBNAME.match(self.dsn)
            return match.group(1) if match else "postgres"
        return self.path.name

    @property
    def shown(self) -> str:
        """The lake as messages name it (a connection string never carries a password)."""
        if self.dsn is not None:
            return f"{POSTGRES_PREFIX}{self.dsn} (data in {self.data})"
        return str(self.path)


def locate(target: str | Path, settings: Settings, data_path: str | Path | None = None) -> Location:
    """Where ``target`` is: ``postgres:DSN`` (with ``data_path``, else the setting), a DuckDB
    file, or a DuckLake folder whose catalog is already there or made as settings say."""
    if isinstance(target, str) and target.startswith(POSTGRES_PREFIX):
        return _postgres(target[len(POSTGRES_PREFIX) :].strip(), data_path or settings.data_path)
    path = Path(target).expanduser().resolve()
    if path.suffix.lower() in _DUCKDB_SUFFIXES or path.is_file():
        return Location(path, is_lake=False, catalog="file")
    for catalog, name in _CATALOG_FILES.items():
        if (path / name).exists():
            return Location(path, is_lake=True, catalog=catalog)
    return Location(path, is_lake=True, catalog=settings.catalog)


def _postgres(dsn: str, data_path: str | Path | None) -> Location:
    if not dsn:
        raise ConfigurationError(
            "postgres: needs a connection string, e.g. "
            "'postgres:dbname=lake host=db.internal user=lakewarden'"
        )
    if _DSN_PASSWORD.search(dsn):
        raise ConfigurationError(
            "the PostgreSQL connection string carries a password; remove it and pass the "
            "password through PGPASSWORD or a PGPASSFILE (never on the command line)"
        )
    if not data_path:
        raise ConfigurationError(
            "a lake with a PostgreSQL catalog needs the folder of its data files: give "
            "--data-path DIR or set LAKEWARDEN_DATA_PATH"
        )
    if objectstore.is_remote(str(data_path)):
        # The engine's spill files stay on local disk, per process.
        scratch = Path(tempfile.gettempdir()) / f"lakewarden-{os.getpid()}"
        url = objectstore.normalize(str(data_path))
        return Location(scratch, is_lake=True, catalog="postgres", dsn=dsn, data_url=url)
    path = Path(data_path).expanduser().resolve()
    return Location(path, is_lake=True, catalog="postgres", dsn=dsn)


class Engine:
    """One DuckDB database with the lake attached; hands out cursors bound to the lake."""

    def __init__(self, location: Location, settings: Settings) -> None:
        self.location = location
        self.settings = settings
        self._probe_lock = threading.Lock()
        self._probe_cur: duckdb.DuckDBPyConnection | None = None
        self.database = LAKE_ALIAS if location.is_lake else _file_alias(location.path)
        try:
            self._state = self._connect_state()
            self._con = self._connect()
        except duckdb.Error as exc:
            if location.catalog == "postgres":
                raise ConfigurationError(_postgres_failure(location, exc)) from exc
            raise ConfigurationError(f"cannot open the lake at {location.shown}: {exc}") from exc
        # Every change to the lake, one at a time: in this process, and across the sidecars
        # that share a PostgreSQL catalog (see store/writelock.py).
        shared = location.catalog == "postgres"
        self.write_lock = WriteLock(
            self._state.cursor() if shared else None, CATALOG_ALIAS, settings.statement_timeout_s
        )

    def _connect(self) -> duckdb.DuckDBPyConnection:
        loc = self.location
        config: dict[str, str | bool | int | float | list[str]] = {
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
        }
        # DuckDB takes an internal error as a sign its database may be corrupt and refuses
        # every later statement until the process restarts. Measured with DuckLake 1.5.5 on a
        # PostgreSQL catalog restarted under load: its change feed failed with "INTERNAL Error:
        # Attempted to access index 0 within vector of size 0" and the sidecar stayed down
        # after the catalog came back. With a PostgreSQL catalog the engine's own database is
        # in memory and empty: the lake's state is in PostgreSQL (transactional) and in
        # write-once data files, none of which an internal error in this process can leave
        # half-written, so the engine goes on (the failed statement fails). A DuckDB-file
        # catalog keeps DuckDB's guard: that file is what it protects.
        if loc.dsn is not None:
            config["disable_database_invalidation"] = True
        if loc.is_lake:
            if loc.catalog != "postgres":
                loc.data_path.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(":memory:", config=config)
            extensions.load(con, "ducklake")
            if loc.data_url is not None:
                objectstore.connect(con, loc.data_url)
            if loc.catalog == "postgres":
                extensions.load(con, "postgres")
                source = f"ducklake:postgres:{loc.dsn}"
            elif loc.catalog == "sqlite":
                extensions.load(con, "sqlite")
                source = f"ducklake:sqlite:{loc.path / _CATALOG_FILES[loc.catalog]}"
            else:
                source = f"ducklake:{loc.path / _CATALOG_FILES[loc.catalog]}"
            attach = f"ATTACH {_quote(source)} AS {LAKE_ALIAS} (DATA_PATH {_quote(loc.data)})"
            if loc.catalog == "postgres":
                # The first ATTACH of a new catalog creates DuckLake's tables: sidecars that
                # start together take turns, under the fleet's write lock.
                with WriteLock(self._state.cursor(), CATALOG_ALIAS):
                    con.execute(attach)
            else:
                con.execute(attach)
            con.execute(f"USE {LAKE_ALIAS}")
            if loc.data_url is None:
                # Made once the catalog answered: a start-up that fails creates nothing.
                loc.data_path.mkdir(parents=True, exist_ok=True)
            # Only the data files: the catalog, the state database and the policy and token
            # files beside them stay out of reach of every statement the engine runs.
            allowed = [loc.data]
        else:
            loc.path.parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(str(loc.path), config=config)
            allowed = []
        tmp = (loc.path if loc.is_lake else loc.path.parent) / ".lakewarden-tmp"
        if loc.catalog == "postgres":
            # The data folder may be shared by several sidecars: spill files stay local.
            tmp = Path(tempfile.gettempdir()) / f"lakewarden-{os.getpid()}" / "tmp"
        con.execute(f"SET temp_directory = {_quote(str(tmp))}")
        con.execute(f"SET allowed_directories = [{', '.join(_quote(d) for d in allowed)}]")
        con.execute("SET enable_external_access = false")
        con.execute(f"SET memory_limit = {_quote(self.settings.memory_limit)}")
        con.execute(f"SET threads = {int(self.settings.threads)}")
        con.execute(f"SET checkpoint_threshold = {_quote(_NO_AUTOCHECKPOINT)}")
        if loc.is_lake and loc.data_url is None:
            # DuckDB keeps a copy of every data file it reads (about 25 KB per small file of the
            # soak, none released short of the 4 GB memory limit), and a lake that takes a few
            # commits a second writes thousands of files an hour; local files are in the
            # operating system's page cache already. In object storage the copy saves requests.
            con.execute("SET enable_external_file_cache = false")
        con.execute("SET lock_configuration = true")
        return con

    def _connect_state(self) -> duckdb.DuckDBPyConnection:
        """lakewarden's own state (table state, write history, refusals) in a DuckDB instance
        of its own: agents' cursors belong to the lake's instance, so no statement of theirs can
        name, read or change it, whatever got past authorization."""
        con = duckdb.connect(
            ":memory:",
            config={
                "autoload_known_extensions": False,
                "autoinstall_known_extensions": False,
                "threads": 1,
                "checkpoint_threshold": _NO_AUTOCHECKPOINT,
                # It attaches the PostgreSQL catalog too (see _connect).
                "disable_database_invalidation": self.location.dsn is not None,
            },
        )
        if self.location.dsn is not None:
            extensions.load(con, "postgres")
            con.execute(f"ATTACH {_quote(self.location.dsn)} AS {CATALOG_ALIAS} (TYPE postgres)")
        path = self.location.state_path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)  # a new lake's folder
        try:
            con.execute(
                f"ATTACH {_quote(':memory:' if path is None else str(path))} AS {STATE_ALIAS}"
            )
        except duckdb.IOException as exc:
            # Another lakewarden process holds the state file (a shared catalog): keep going with
            # state in memory; it is re-based from the lake itself.
            log.warning("state file %s is in use (%s); keeping state in memory", path, exc)
            con.execute(f"ATTACH ':memory:' AS {STATE_ALIAS}")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    @property
    def state_schema(self) -> str:
        """Where lakewarden's own state lives: a schema of the lake's PostgreSQL catalog
        database, which every sidecar of the lake shares, or the state file's (one process)."""
        if self.location.dsn is not None:
            return f"{CATALOG_ALIAS}.{SHARED_SCHEMA}"
        return f"{STATE_ALIAS}.main"

    @property
    def state_shared(self) -> bool:
        return self.location.dsn is not None

    def state_cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor on lakewarden's state database (never handed to agents)."""
        return self._state.cursor()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor (its own DuckDB connection) whose default database is the lake."""
        cur = self._con.cursor()
        try:
            cur.execute(f"USE {self.database}")
        except duckdb.Error as exc:
            # USE asks a DuckLake catalog for its newest snapshot: an unreachable catalog
            # fails here, before any statement. The cursor is left to the garbage collector:
            # closing it explicitly on an engine that cannot flush its log aborted the whole
            # process in duckdb 1.5.5 (std::terminate on a PermissionException, see
            # test_readyz_fails_when_the_engine_cannot_run_a_statement).
            raise faults.storage_failure(exc) or ExecutionError(
                f"cannot open a cursor on the lake: {_first_line(exc)}"
            ) from exc
        return cur

    def probe(self, timeout_s: float = 2.0) -> str | None:
        """None when the engine still runs a trivial statement on the lake; else what failed.

        A statement can leave the engine unable to run anything (logging switched to a folder
        it may not write made every later statement fail): readiness asks the engine itself.
        On a lake the statement reads the catalog's newest snapshot, so a catalog that cannot
        be reached (a PostgreSQL server down) makes the sidecar not ready: ``SELECT 1`` alone
        never reaches it. The probe keeps one cursor for the engine's life: in that state,
        closing a connection ends the process (the engine throws from a destructor), so none
        is closed here.
        """
        probe = (
            f"SELECT id FROM {LAKE_ALIAS}.current_snapshot()"
            if self.location.is_lake
            else "SELECT 1"
        )
        with self._probe_lock:
            try:
                if self._probe_cur is None:
                    self._probe_cur = self._con.cursor()
                cur = self._probe_cur
                with WATCHDOG.guard(cur, timeout_s) as deadline:
                    try:
                        cur.execute(probe).fetchall()
                    except duckdb.Error:
                        if deadline.expired:
                            return f"the engine did not answer within {timeout_s:g} s"
                        raise
            except duckdb.Error as exc:
                fault = faults.storage_failure(exc)
                return fault.message if fault is not None else _first_line(exc)
        return None

    def checkpoint(self) -> list[str]:
        """Move the write-ahead logs of the lake's local database files (a DuckDB catalog or
        file, the state file) into their databases, each when its log is past
        :data:`CHECKPOINT_WAL_BYTES` and its device has room for the copy; what was done.

        Measured with duckdb 1.5.5: a checkpoint that runs out of space invalidates the
        database until it is attached again, so a device without room is left alone (the log
        keeps every commit; the checkpoint at shutdown, which may fail harmlessly, or a later
        one does it). Each runs under the lake's write lock: no commit lands meanwhile.
        """
        done = []
        for con, database, path in self._checkpointable():
            wal = path.with_name(path.name + ".wal")
            try:
                logged = wal.stat().st_size
                size = path.stat().st_size
                room = shutil.disk_usage(path.parent).free
            except OSError:
                continue
            if logged < CHECKPOINT_WAL_BYTES:
                continue
            if room < 2 * (size + logged) + _CHECKPOINT_HEADROOM_BYTES:
                log.warning(
                    "not checkpointing %s: its write-ahead log is %d MB and its device has "
                    "%d MB free; free space there",
                    path,
                    logged // 2**20,
                    room // 2**20,
                )
                continue
            with self.write_lock:
                cur = con.cursor()
                try:
                    cur.execute(f"CHECKPOINT {database}")
                finally:
                    cur.close()
            done.append(str(path))
        return done

    def _checkpointable(self) -> list[tuple[duckdb.DuckDBPyConnection, str, Path]]:
        loc = self.location
        out = []
        files = loc.catalog_files
        if loc.catalog == "duckdb" and files is not None:
            out.append((self._con, f"__ducklake_metadata_{LAKE_ALIAS}", files[0]))
        elif not loc.is_lake:
            out.append((self._con, self.database, loc.path))
        if loc.state_path is not None:
            out.append((self._state, STATE_ALIAS, loc.state_path))
        return out

    def close(self) -> None:
        self._con.close()
        self._state.close()


# libpq's reason for a failed connection, and what to do about it.
_POSTGRES_FIXES = (
    ("password authentication failed", "set PGPASSWORD (or PGPASSFILE) to the user's password"),
    ("no password supplied", "set PGPASSWORD (or PGPASSFILE) to the user's password"),
    ("role", "check user=: no such role on the server"),
    (
        "database",
        "check dbname=, or create it (lakewarden makes the lake's tables, not the database)",
    ),
    ("connection refused", "check host= and port=: is PostgreSQL running and reachable?"),
    ("timeout expired", "check host= and port=: is PostgreSQL running and reachable?"),
    ("could not translate host name", "check host=: the name does not resolve"),
    ("no pg_hba.conf entry", "allow this host and user in the server's pg_hba.conf"),
    ("does not match existing data path", "give the data path the lake was made with"),
)


def _postgres_failure(loc: Location, exc: duckdb.Error) -> str:
    """A start-up error naming what failed and what to fix, without DuckDB's wrapping."""
    text = str(exc)
    reason = text.rsplit(" failed: ", 1)[-1] if " failed: " in text else text
    lines = reason.replace("FATAL:", "").strip().splitlines()
    reason = " ".join(lines[0].split()) if lines else text
    fix = next((hint for key, hint in _POSTGRES_FIXES if key in reason.lower()), None)
    message = f"cannot open the lake's PostgreSQL catalog ({loc.dsn}): {reason}"
    return f"{message}; {fix}" if fix else message


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _file_alias(path: Path) -> str:
    return path.stem


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
