"""The REST client's transport: keep-alive, idle connections the server closed, threads, errors."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import lakewarden
from lakewarden.client import Client, ServerUnavailable

from server_helpers import Served, free_port, serve


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path / "lake") as s:
        s.warden.sql("CREATE TABLE t (id BIGINT, who VARCHAR)", agent="setup")
        yield s


def _connections(served: Served) -> int:
    """Established TCP connections the server side holds open right now (Linux /proc)."""
    port = f"{int(served.url.rsplit(':', 1)[1]):04X}"
    established = "01"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(f":{port}") and row[3] == established)


def test_one_connection_is_kept_alive_across_statements(served: Served) -> None:
    with Client(served.url, agent="a") as client:
        s = client.session()
        for i in range(5):
            assert s.sql("INSERT INTO t VALUES (?, ?)", [i, "a"]).rows_affected == 1
        assert s.sql("SELECT count(*) AS n FROM t").rows == [[5]]
        assert _connections(served) == 1


def test_threads_share_a_client_each_on_its_own_connection(served: Served) -> None:
    errors: list[BaseException] = []
    with Client(served.url, agent="threads") as client:

        def work(k: int) -> None:
            try:
                s = client.session()
                for i in range(10):
                    s.sql("INSERT INTO t VALUES (?, ?)", [k * 100 + i, f"thread-{k}"])
                    assert s.sql("SELECT count(*) FROM t WHERE who = ?", [f"thread-{k}"]).rows == [
                        [i + 1]
                    ]
            except BaseException as exc:  # surfaced in the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert client.session().sql("SELECT count(*) FROM t").rows == [[40]]
    assert _connections(served) == 0  # close() closed every thread's connection


class OneRequestPerConnection:
    """A server that answers one request per connection, then closes it without saying so,
    as a keep-alive server does when a connection has been idle too long."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.requests = 0
        self.closed = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests += 1
                body = json.dumps({"tables": [{"name": f"call-{self.requests}"}]}).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            self.closed.release()

    def close(self) -> None:
        self.sock.close()


def test_a_connection_closed_while_idle_is_replaced_not_reused() -> None:
    server = OneRequestPerConnection()
    try:
        names = []
        with Client(f"http://127.0.0.1:{server.port}") as client:
            for _ in range(3):
                names.append(client.tables()[0]["name"])
                assert server.closed.acquire(timeout=10)  # the connection is closed, and idle
        assert names == ["call-1", "call-2", "call-3"]
        assert (server.accepted, server.requests) == (3, 3)  # each request sent exactly once
    finally:
        server.close()


def test_an_unreachable_server_is_a_lakewarden_error() -> None:
    port = free_port()
    with (
        Client(f"http://127.0.0.1:{port}", agent="a") as client,
        pytest.raises(ServerUnavailable) as raised,
    ):
        client.session().sql("SELECT 1")
    assert isinstance(raised.value, lakewarden.LakewardenError)
    assert raised.value.code == "unavailable"
    assert f"127.0.0.1:{port}/v1/sql" in str(raised.value)


@pytest.mark.parametrize("url", ["127.0.0.1:7117", "ftp://host/x", "http://"], ids=str)
def test_a_bad_base_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        Client(url)
