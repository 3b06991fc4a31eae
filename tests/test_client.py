"""The REST client: keep-alive, connections the server closed, retries, threads, errors."""

from __future__ import annotations

import socket
import threading
import time
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
    """A raw HTTP server that answers every request with the same bytes.

    With ``close`` it closes each connection after one answer, without saying so in the
    headers. With ``hang_up_after=n`` it answers n requests on a connection, then reads the
    next one and closes the connection without answering: a keep-alive connection the server
    dropped just as a request arrived.
    """

    def __init__(
        self,
        answer: bytes,
        close: bool = False,
        hang_up_after: int | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.answer = answer
        self.close_each = close
        self.hang_up_after = hang_up_after
        self.delay_s = delay_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.requests: list[bytes] = []  # every request head received, answered or not
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
            answered = 0
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
                self.requests.append(head)
                if answered == self.hang_up_after:
                    break
                time.sleep(self.delay_s)
                conn.sendall(self.answer)
                answered += 1
                if self.close_each:
                    break
        self.closed.release()

    def close(self) -> None:
        self.sock.close()


def _answer(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
        % (extra, len(body), body)
    )


TABLES = _answer(b'{"tables": [{"name": "t"}]}')
ONE_ROW = _answer(b'{"kind": "read", "columns": ["n"], "rows": [[1]], "row_count": 1}')


@pytest.mark.parametrize(
    ("answer", "close", "connections"),
    [
        (TABLES, False, 1),
        (_answer(b'{"tables": [{"name": "t"}]}', b"Connection: close\r\n"), True, 3),
        (TABLES, True, 3),  # closed while idle, unannounced: noticed before reuse
    ],
    ids=["keep-alive", "connection-close", "closed-while-idle"],
)
def test_connections_are_reused_only_while_alive(
    answer: bytes, close: bool, connections: int
) -> None:
    server = ScriptedServer(answer, close)
    try:
        with Client(server.url) as client:
            for _ in range(3):
                assert client.tables() == [{"name": "t"}]
                if close:
                    assert server.closed.acquire(timeout=10)  # closed before the next request
        assert (server.accepted, len(server.requests)) == (connections, 3)  # none sent twice
    finally:
        server.close()


def test_a_read_is_sent_again_when_its_connection_was_dropped() -> None:
    server = ScriptedServer(TABLES, hang_up_after=1)
    try:
        with Client(server.url) as client:
            assert client.tables() == [{"name": "t"}]
            assert client.tables() == [{"name": "t"}]  # dropped, then sent on a new connection
        assert (server.accepted, len(server.requests)) == (2, 3)
    finally:
        server.close()


def test_a_statement_is_never_sent_twice() -> None:
    server = ScriptedServer(ONE_ROW, hang_up_after=1)
    try:
        with Client(server.url, agent="a") as client:
            s = client.session()
            assert s.sql("SELECT 1").rows == [[1]]
            with pytest.raises(ServerUnavailable, match="not sent again"):
                s.sql("INSERT INTO t VALUES (1)")  # may have run: the caller decides
        assert (server.accepted, len(server.requests)) == (1, 2)
    finally:
        server.close()


def test_the_request_carries_token_agent_and_traceparent() -> None:
    server = ScriptedServer(ONE_ROW)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        with Client(server.url, token="secret", agent="a") as client:
            client.session("b").sql("SELECT ?", [1], max_rows=5, traceparent=traceparent)
        lines = server.requests[0].decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert lines[0] == "POST /v1/sql HTTP/1.1"
        assert headers["authorization"] == "Bearer secret"
        assert headers["x-lakewarden-agent"] == "b"
        assert headers["traceparent"] == traceparent
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"].startswith("lakewarden-client/")
    finally:
        server.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
    ],
    ids=["not-http", "truncated-body"],
)
def test_a_broken_answer_is_server_unavailable(answer: bytes) -> None:
    server = ScriptedServer(answer, close=True)
    try:
        with Client(server.url) as client, pytest.raises(ServerUnavailable):
            client.tables()
    finally:
        server.close()


def test_no_answer_in_time_is_server_unavailable() -> None:
    server = ScriptedServer(ONE_ROW, delay_s=2)
    try:
        with (
            Client(server.url, timeout=0.2) as client,
            pytest.raises(ServerUnavailable, match=r"no answer within 0\.2 s"),
        ):
            client.session().sql("SELECT 1")
        assert len(server.requests) == 1
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
    assert "lakewarden serve" in str(raised.value)


def test_a_table_name_is_one_path_segment() -> None:
    server = ScriptedServer(_answer(b"{}"))
    try:
        with Client(server.url) as client:
            client.table("odd name?#x")
        assert server.requests[0].startswith(b"GET /v1/tables/odd%20name%3F%23x HTTP/1.1")
    finally:
        server.close()


@pytest.mark.parametrize("url", ["127.0.0.1:7117", "ftp://host/x", "http://"], ids=str)
def test_a_bad_base_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        Client(url)
