"""Bounded resources, tried as an attacker would, against a real server process.

The server runs as its own process (``lakewarden serve``) so that its resident memory can be
read from /proc: each case resets the peak (``clear_refs``), sends one hostile request, and
asserts the structured error, the wall time and the server's peak RSS. Sizes fit CI (2 cores,
24 GB): each case takes a few seconds at most.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import lakewarden
from lakewarden.settings import Settings

from server_helpers import free_port, serve

MB = 1024 * 1024
ANALYST, ADMIN = "analyst-token-0123456789", "admin-token-0123456789"
POLICY = """\
version: 1
agents:
  analyst: {token_env: LW_LIMITS_ANALYST, read: ["public_*"], timeout_s: 3}
  admin: {token_env: LW_LIMITS_ADMIN, read: ["*"], write: ["*"], ddl: true, timeout_s: 3}
restore: [admin]
"""
# Settings of the server under test: a small engine memory limit, so the address-space cap
# derived from it (1 GB + 6 GB) is reached by sizes CI can afford.
SERVER_ENV = {
    "LAKEWARDEN_MEMORY_LIMIT": "1GB",
    "LAKEWARDEN_MAX_RESULT_BYTES": "16MB",
    "OTEL_SDK_DISABLED": "true",
}


@dataclass
class Process:
    url: str
    pid: int

    def status(self) -> dict[str, int]:
        """VmRSS, VmHWM (peak RSS) and VmSize of the server, in bytes."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(value.split()[0]) * 1024
        return out

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    root = tmp_path_factory.mktemp("limits")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    env = {
        **os.environ,
        **SERVER_ENV,
        "LW_LIMITS_ANALYST": ANALYST,
        "LW_LIMITS_ADMIN": ADMIN,
    }
    command = [sys.executable, "-m", "lakewarden.intake.cli", "serve", "--lake", str(root / "lake")]
    proc = subprocess.Popen(
        [*command, "--policy", str(policy), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "the server exited at start-up"
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
        served = Process(url, proc.pid)
        seed = [
            "CREATE TABLE public_orders (id BIGINT, note VARCHAR)",
            "CREATE TABLE secret_salaries (name VARCHAR, salary BIGINT)",
        ]
        for sql in seed:
            response = httpx.post(
                f"{url}/v1/sql", json={"sql": sql}, headers=served.auth(ADMIN), timeout=30
            )
            assert response.status_code == 200, response.text
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body["error"]) == {"code", "message", "violations"}
    assert body["error"]["code"] == code, body
    for violation in body["error"]["violations"]:
        assert {"rule", "detail"} <= set(violation)
    return dict(body["error"])


# -- statements that try to take the engine's memory or time -----------------------------------

# (sql, accepted error codes, wall-time bound s, peak-RSS bound MB). The analyst's limit is
# 3 s. Where memory and time both bound a statement, which one strikes first depends on the
# address space the server has mapped at that moment: either answer is a bounded refusal.
BOUNDED = {"too_large": 413, "timeout": 408}
MEMORY: frozenset[str | None] = frozenset({"too_large", "timeout"})
TIME: frozenset[str | None] = frozenset({"timeout"})
STATEMENTS = [
    pytest.param("SELECT len(range(1000000000))", MEMORY, 3, 400, id="range-list-8GB"),
    pytest.param(
        # Fits under the cap, so it may run: one function call runs to its end (the engine
        # looks for an interrupt between chunks, not inside one), bounded by what it may take.
        "SELECT list_sum(range(300000000))",
        MEMORY | {None},
        15,
        3000,
        id="range-list-2.4GB",
    ),
    pytest.param("SELECT len(list_resize([1], 2000000000))", MEMORY, 3, 400, id="list-resize"),
    pytest.param("SELECT repeat('x', 60000000) FROM range(8)", MEMORY, 5, 1500, id="repeat-rows"),
    pytest.param(
        "SELECT length(string_agg(repeat('x', 1000), ',')) FROM range(3000000)",
        MEMORY,
        5,
        1500,
        id="string-agg",
    ),
    pytest.param(
        "SELECT len(array_agg(range)) FROM range(300000000)",
        MEMORY,
        5,
        1500,
        id="huge-list-aggregate",
    ),
    pytest.param(
        "SELECT count(*) FROM range(1000000) a, range(1000000) b",
        TIME,
        5,
        600,
        id="cross-join",
    ),
    pytest.param(
        # two rows, found while the result is being fetched: the deadline strikes mid-fetch
        "SELECT range FROM range(100000000000) WHERE range % 50000000000 = 0",
        TIME,
        5,
        600,
        id="timeout-while-fetching",
    ),
    pytest.param("SELECT repeat('x', 1000) AS v FROM range(100000)", MEMORY, 5, 800, id="result"),
]


@pytest.mark.parametrize(("sql", "codes", "wall_s", "peak_mb"), STATEMENTS)
def test_hostile_statement_is_bounded(
    server: Process, sql: str, codes: frozenset[str | None], wall_s: float, peak_mb: int
) -> None:
    server.reset_peak()
    before = server.status()["VmRSS"]
    started = time.monotonic()
    response = httpx.post(
        f"{server.url}/v1/sql",
        json={"sql": sql, "max_rows": 1_000_000},
        headers=server.auth(ANALYST),
        timeout=120,
    )
    wall = time.monotonic() - started
    code = response.json().get("error", {}).get("code")
    assert code in codes, response.text[:500]
    if code is None:
        assert response.status_code == 200, response.text[:500]
    else:
        assert_error(response, BOUNDED[code], code)
    grown = server.status()["VmHWM"] - before
    print(f"{sql}: {code} in {wall:.2f} s, peak RSS +{grown / MB:.0f} MB")
    assert wall < wall_s, f"{wall:.1f} s"
    assert grown < peak_mb * MB, f"peak RSS grew by {grown / MB:.0f} MB"
    # ... and the engine still answers the next statement
    after = httpx.post(
        f"{server.url}/v1/sql", json={"sql": "SELECT 42"}, headers=server.auth(ANALYST)
    )
    assert after.json()["rows"] == [[42]]


# -- requests that try to take the HTTP layer's memory or time, before authentication --------


def raw_exchange(url: str, head: bytes, body_chunks: Iterator[bytes]) -> bytes:
    """Send bytes as they are (no client would send these) and return the server's answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: the point
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
        return answer


def huge_header(size: int) -> Iterator[bytes]:
    yield b"X-Filler: "
    chunk = b"a" * 65536
    for _ in range(size // len(chunk)):
        yield chunk
    yield b"\r\n\r\n"


@pytest.mark.parametrize(
    ("path", "status", "send"),
    [
        pytest.param("/v1/sql", 431, "header", id="sql-50MB-header"),
        pytest.param("/mcp/", 431, "header", id="mcp-50MB-header"),
        pytest.param("/v1/sql", 413, "declared", id="sql-declared-50MB-body"),
        pytest.param("/mcp/", 413, "declared", id="mcp-declared-50MB-body"),
        pytest.param("/v1/sql", 413, "chunked", id="sql-chunked-50MB-body"),
        pytest.param("/mcp/", 413, "chunked", id="mcp-chunked-50MB-body"),
    ],
)
def test_oversized_request_is_refused_before_authentication(
    server: Process, path: str, status: int, send: str
) -> None:
    size = 50 * MB
    start = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    if send == "header":
        head, chunks = start, huge_header(size)
    elif send == "declared":
        head, chunks = start + f"Content-Length: {size}\r\n\r\n".encode(), iter(())
    else:
        piece = b"x" * 65536
        framed = b"%x\r\n%s\r\n" % (len(piece), piece)
        head = start + b"Transfer-Encoding: chunked\r\n\r\n"
        chunks = iter([framed] * (size // len(piece)) + [b"0\r\n\r\n"])
    server.reset_peak()
    before = server.status()["VmRSS"]
    started = time.monotonic()
    answer = raw_exchange(server.url, head, chunks)
    wall = time.monotonic() - started
    grown = server.status()["VmHWM"] - before
    print(f"{path} {send}: {answer[:12]!r} in {wall:.2f} s, peak RSS +{grown / MB:.0f} MB")
    head_line, _, rest = answer.partition(b"\r\n")
    assert head_line.split()[1] == str(status).encode(), answer[:1000]
    assert b'"code":"too_large"' in rest.replace(b" ", b"")  # no token was needed to be refused
    assert wall < 5, f"{wall:.1f} s"
    assert grown < 20 * MB, f"peak RSS grew by {grown / MB:.0f} MB"


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        pytest.param(10_000, 200, None, id="at-the-limit"),
        pytest.param(10_001, 413, "too_large", id="one-over"),
        pytest.param(2_000_000, 413, "too_large", id="body-over"),
    ],
)
def test_parameter_count_and_size_are_capped(
    server: Process, params: int, status: int, code: str | None
) -> None:
    sql = "SELECT list_value(" + ", ".join(["?"] * params) + ")" if params <= 10_000 else "SELECT ?"
    started = time.monotonic()
    response = httpx.post(
        f"{server.url}/v1/sql",
        json={"sql": sql, "params": [1] * params},
        headers=server.auth(ANALYST),
        timeout=60,
    )
    assert time.monotonic() - started < 10
    if code is None:
        assert response.status_code == 200, response.text[:300]
    else:
        violations = assert_error(response, status, code)["violations"]
        assert violations[0]["rule"] in {"params", "body_size"}


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"LAKEWARDEN_MAX_BODY_BYTES": "lots"}, "not a size", id="body-not-a-size"),
        pytest.param({"LAKEWARDEN_MAX_BODY_BYTES": "10"}, "at least", id="body-too-small"),
        pytest.param({"LAKEWARDEN_MAX_HEADER_BYTES": "1KiBs"}, "not a size", id="header-unit"),
        pytest.param({"LAKEWARDEN_MAX_PARAMS": "0"}, "at least 1", id="params-zero"),
        pytest.param({"LAKEWARDEN_MAX_RESULT_BYTES": "-1"}, "not a size", id="result-negative"),
        pytest.param({"LAKEWARDEN_MAX_CONNECTIONS": "x"}, "not a number", id="connections"),
        pytest.param({"LAKEWARDEN_ADDRESS_SPACE_LIMIT": "100MB"}, "below 1GB", id="as-tiny"),
    ],
)
def test_invalid_limit_settings_fail_at_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(lakewarden.ConfigurationError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, 4 * 10**9 + 6 * 10**9, id="auto-default"),
        pytest.param({"LAKEWARDEN_MEMORY_LIMIT": "1GiB"}, 2**30 + 6 * 10**9, id="auto-follows"),
        pytest.param({"LAKEWARDEN_ADDRESS_SPACE_LIMIT": "12GB"}, 12 * 10**9, id="explicit"),
        pytest.param({"LAKEWARDEN_ADDRESS_SPACE_LIMIT": "0"}, None, id="none"),
    ],
)
def test_address_space_limit(env: dict[str, str], expected: int | None) -> None:
    assert Settings.from_env(env).address_space_bytes() == expected


@pytest.mark.parametrize(
    ("env", "capped"),
    [
        pytest.param({}, True, id="default"),
        pytest.param({"MALLOC_ARENA_MAX": "4"}, False, id="environment-decides"),
    ],
)
def test_malloc_arenas_are_capped(env: dict[str, str], capped: bool) -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's allocator only")
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    code = "from lakewarden.intake.allocator import cap_malloc_arenas as cap; print(cap(2))"
    run = subprocess.run(
        [sys.executable, "-c", code], env=base | env, capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == str(capped)


SLOW_READ = "SELECT count(*) FROM range(3000000000) WHERE hash(range) % 7 = 1"


def test_connections_over_the_limit_get_503(tmp_path: Path) -> None:
    # Every connection busy with a statement: none can make room, so a new one is refused.
    settings = Settings(max_connections=3, statement_timeout_s=60)
    with serve(tmp_path / "lake", settings=settings) as served:
        host, port = served.url.removeprefix("http://").split(":")
        body = json.dumps({"sql": SLOW_READ}).encode()
        request = (
            b"POST /v1/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        busy = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
        try:
            for sock in busy:
                sock.sendall(request)
            time.sleep(0.5)  # the server has read them and runs them
            refused = httpx.post(f"{served.url}/v1/sql", json={"sql": "SELECT 1"}, timeout=10)
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert (error["code"], error["retryable"]) == ("unavailable", True)
            assert error["violations"][0]["rule"] == "max_connections"
            assert refused.headers["retry-after"] == "1"
        finally:
            for sock in busy:
                sock.close()  # ... and their reads are stopped, since nobody waits for them
        deadline = time.monotonic() + 10
        while True:
            again = httpx.post(f"{served.url}/v1/sql", json={"sql": "SELECT 1"}, timeout=10)
            if again.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert again.status_code == 200, again.text


def test_max_rows_setting_is_validated_and_applied(tmp_path: Path) -> None:
    with pytest.raises(lakewarden.ConfigurationError, match="LAKEWARDEN_MAX_ROWS"):
        Settings.from_env({"LAKEWARDEN_MAX_ROWS": "0"})
    settings = Settings.from_env({"LAKEWARDEN_MAX_ROWS": "3"})
    with serve(tmp_path / "lake", settings=settings) as served:
        body = httpx.post(
            f"{served.url}/v1/sql", json={"sql": "SELECT * FROM range(10)"}, timeout=30
        ).json()
        assert (body["row_count"], body["truncated"]) == (3, True)


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="silent-connection"),
        pytest.param(b"POST /v1/sql HTTP/1.1\r\nHost: x\r\n", id="slow-head"),
        pytest.param(
            b'POST /v1/sql HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"sql"',
            id="slow-body",
        ),
    ],
)
def test_slow_clients_are_cut_off(tmp_path: Path, sent: bytes) -> None:
    settings = Settings(request_read_timeout_s=1)
    with serve(tmp_path / "lake", settings=settings) as served:
        host, port = served.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(sent)
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                answer += chunk
            waited = time.monotonic() - started
        assert 0.9 < waited < 3, f"{waited:.1f} s"
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b'"code":"timeout"' in answer.replace(b" ", b"")
        assert b"request_read_timeout" in answer
