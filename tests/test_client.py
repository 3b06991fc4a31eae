"""The REST client's transport: keep-alive, idle connections the server closed, threads, errors."""

from __future__ import annotations

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


class ScriptedServer:
    """A raw HTTP server that answers every request with the same bytes; with ``close`` it
    closes each connection after one answer, without saying so in the headers."""

    def __init__(self, answer: bytes, close: bool = False) -> None:
        self.answer = answer
        self.close_each = close
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.requests = 0
        self.closed = threading.Semaphore(0)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        self.closed.release()
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                self.requests += 1
                conn.sendall(self.answer)
                if self.close_each:
                    break
        self.closed.release()

    def close(self) -> None:
        self.sock.close()


BODY = b'{"tables": [{"name": "t"}]}'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
SIZED = OK + b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
CHUNKED = OK + (
    b"Transfer-Encoding: chunked\r\n\r\n"
    b"5\r\n" + BODY[:5] + b"\r\n" + b"%x;ext=1\r\n" % (len(BODY) - 5) + BODY[5:] + b"\r\n"
    b"0\r\nX-Trailer: yes\r\n\r\n"
)


@pytest.mark.parametrize(
    ("answer", "close", "connections"),
    [
        (SIZED, False, 1),
        (CHUNKED, False, 1),
        (b"HTTP/1.1 100 Continue\r\n\r\n" + SIZED, False, 1),
        (SIZED.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n", 1), True, 3),
        (SIZED.replace(b"HTTP/1.1", b"HTTP/1.0", 1), True, 3),
        (OK + b"\r\n" + BODY, True, 3),  # no length: the body ends with the connection
        (SIZED, True, 3),  # closed while idle, unannounced: noticed before reuse
    ],
    ids=[
        "content-length",
        "chunked",
        "100-continue",
        "connection-close",
        "http-1.0",
        "until-eof",
        "closed-while-idle",
    ],
)
def test_answers_are_framed_and_connections_reused_only_when_alive(
    answer: bytes, close: bool, connections: int
) -> None:
    server = ScriptedServer(answer, close)
    try:
        with Client(server.url) as client:
            for _ in range(3):
                assert client.tables() == [{"name": "t"}]
                if close:
                    assert server.closed.acquire(timeout=10)  # closed before the next request
        assert (server.accepted, server.requests) == (connections, 3)  # no request sent twice
    finally:
        server.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        OK + b"Content-Length: 100\r\n\r\n{}",
        OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        OK + b"Content-Length: ten\r\n\r\n{}",
    ],
    ids=["not-http", "truncated-body", "bad-chunk-size", "bad-length"],
)
def test_a_broken_answer_is_server_unavailable(answer: bytes) -> None:
    server = ScriptedServer(answer, close=True)
    try:
        with Client(server.url) as client, pytest.raises(ServerUnavailable):
            client.tables()
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
