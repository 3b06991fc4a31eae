"""A real PostgreSQL server and a real S3-compatible server, for the tests and benchmarks of
lakes with a PostgreSQL catalog and data in object storage.

Debian's ``postgresql`` package provides the binaries (CI installs it, see .ci/run, so a missing
one is an error, not a skip). Each test session gets its own cluster in a temp folder on a free
loopback port, with password authentication over TCP, and stops it at the end. ``initdb``
refuses to run as root: as root, the cluster runs as the ``postgres`` user the package creates.
The S3 server is moto's (``moto[server]``, a test dependency), started the same way.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "lakewarden"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or (
        [p] if (p := shutil.which(name)) else []
    )
    if not found:
        raise RuntimeError(f"{name} not found: install Debian's 'postgresql' package (.ci/run)")
    return found[-1]


@dataclass
class Postgres:
    port: int
    password: str
    folder: Path
    owner: str | None = None  # the user the server runs as (``postgres`` when run as root)

    def stop(self) -> None:
        """Stop the server at once, as an outage does: sessions are cut, nothing waits."""
        _pg_ctl(self, "-m", "fast", "stop")

    def start(self) -> None:
        """Start the server again on the same port and data (after :meth:`stop`)."""
        _pg_ctl(
            self, "-o", _options(self.port, self.folder), "-l", str(self.folder / "log"), "start"
        )

    def dsn(self, dbname: str, *, user: str = USER, port: int | None = None) -> str:
        return f"dbname={dbname} host=127.0.0.1 port={port or self.port} user={user}"

    def env(self, password: str | None = None) -> dict[str, str]:
        """The environment a client needs: the password through libpq's own variable."""
        return {**os.environ, "PGPASSWORD": self.password if password is None else password}

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        done = subprocess.run(
            [
                _bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                "-d",
                dbname,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def new_database(self) -> str:
        name = f"lake_{secrets.token_hex(4)}"
        self.psql(f"CREATE DATABASE {name}")
        return name


def _as_owner(args: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *args] if owner else args


def _options(port: int, folder: Path) -> str:
    return f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"


def _pg_ctl(server: Postgres, *args: str) -> None:
    done = subprocess.run(
        _as_owner([_bin("pg_ctl"), "-D", str(server.folder / "data"), "-w", *args], server.owner),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + (server.folder / "log").read_text()[-2000:]


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    owner = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="lakewarden-pg-"))
    data, pwfile = folder / "data", folder / "pw"
    password = secrets.token_urlsafe(16)
    pwfile.write_text(password + "\n")
    if owner:
        uid = pwd.getpwnam(owner)
        for path in (folder, pwfile):
            os.chown(path, uid.pw_uid, uid.pw_gid)
    port = free_port()
    run = dict(capture_output=True, text=True, timeout=120, check=False)
    made = subprocess.run(
        _as_owner(
            [
                _bin("initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ],
            owner,
        ),
        **run,  # type: ignore[call-overload]
    )
    assert made.returncode == 0, made.stderr
    options = _options(port, folder)
    started = subprocess.run(
        _as_owner(
            [
                _bin("pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(folder / "log"),
                "-w",
                "start",
            ],
            owner,
        ),
        **run,  # type: ignore[call-overload]
    )
    assert started.returncode == 0, started.stderr + (folder / "log").read_text()
    server = Postgres(port, password, folder, owner)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.psql("SELECT 1")
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        subprocess.run(
            _as_owner([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], owner),
            **run,  # type: ignore[call-overload]
        )
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class S3:
    """A real S3-compatible HTTP server (moto's), with credentials in the AWS variables."""

    endpoint: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "lakewarden-test",
            "AWS_SECRET_ACCESS_KEY": "lakewarden-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        )

    def new_bucket(self) -> str:
        name = f"lake-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listed.get("Contents", [])]


@contextmanager
def s3_server() -> Iterator[S3]:
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        raise RuntimeError("moto_server not found: pip install '.[test]' (it needs moto[server])")
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        yield S3(endpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
