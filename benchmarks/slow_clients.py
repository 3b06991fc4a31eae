"""Slow and broken HTTP clients, on raw sockets, for the slow-client benchmark and tests.

Each attack runs on one asyncio loop and returns what the server did to its connections: how
many it answered, with which status, and how long each was held. Nothing here uses an HTTP
client library: the point is to send what no well-behaved client would (a head one byte a
second, a body that never ends, a connection that never speaks), and to leave mid-answer.

``python -m benchmarks.slow_clients ATTACK URL SECONDS [COUNT]`` runs one attack in its own
process (the benchmark does, so the attackers do not share a GIL with the measured agent) and
prints its tally as one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

HEAD = b"POST /v1/sql HTTP/1.1\r\nHost: lakewarden\r\nContent-Type: application/json\r\n"
KEEPALIVE_PROBE = b"GET /healthz HTTP/1.1\r\nHost: lakewarden\r\n\r\n"
# Big enough that its JSON answer (~14 MB) is far more than a socket buffer holds.
BIG_READ = "SELECT range AS id, repeat('x', 120) AS pad FROM range(100000)"
SLOW_READ = "SELECT count(*) FROM range(3000000000) WHERE hash(range) % 7 = 1"


@dataclass
class Tally:
    """What the server did to an attack's connections."""

    opened: int = 0
    refused: int = 0  # connect() failed
    statuses: Counter[str] = field(default_factory=Counter)  # first status line per answer
    held_s: list[float] = field(default_factory=list)  # how long each connection lived
    peak_open: int = 0
    _open: int = 0

    def connected(self) -> None:
        self.opened += 1
        self._open += 1
        self.peak_open = max(self.peak_open, self._open)

    def closed(self, started: float, answer: bytes, *, left: bool = False) -> None:
        """One connection over: ``answer`` is what the server sent; ``left`` when the
        attacker closed it itself (its time was up), not the server."""
        self._open -= 1
        if left:
            self.statuses["left"] += 1
            return
        self.held_s.append(time.monotonic() - started)
        status = answer.split(b"\r\n", 1)[0].split(b" ")[1:2]
        self.statuses[status[0].decode() if status else "none"] += 1

    def to_dict(self) -> dict[str, object]:
        held = sorted(self.held_s)
        return {
            "opened": self.opened,
            "refused": self.refused,
            "statuses": dict(self.statuses),
            "peak_open": self.peak_open,
            "held_max_s": round(held[-1], 2) if held else None,
            "held_median_s": round(held[len(held) // 2], 2) if held else None,
        }


def raise_fd_limit(wanted: int) -> int:
    """This process's open-file limit raised towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    return host, int(port)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    answer = b""
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(65536):
            answer += chunk
    return answer


async def _connect(
    url: str, tally: Tally
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A new connection, counted in ``tally``; None (counted as refused) when the server
    refused it."""
    try:
        streams = await asyncio.open_connection(*host_port(url))
    except OSError:
        tally.refused += 1
        return None
    tally.connected()
    return streams


async def _drip(
    url: str, tally: Tally, preamble: bytes, drop: bytes, interval_s: float, until: float
) -> None:
    """One connection: ``preamble``, then one byte of ``drop`` every ``interval_s`` until the
    server answers or closes."""
    streams = await _connect(url, tally)
    if streams is None:
        return
    reader, writer = streams
    started = time.monotonic()
    answered = asyncio.ensure_future(_read_all(reader))
    try:
        if preamble:
            writer.write(preamble)
        for i in range(len(drop)):
            if answered.done() or time.monotonic() > until:
                break
            writer.write(drop[i : i + 1])
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            await asyncio.wait({answered}, timeout=interval_s)
        await asyncio.wait({answered}, timeout=max(0.1, until - time.monotonic()))
    finally:
        left = not answered.done()
        answer = b"" if left else answered.result()
        answered.cancel()
        writer.close()
    tally.closed(started, answer, left=left)


async def slow_head(url: str, count: int, seconds: float, interval_s: float = 1.0) -> Tally:
    """``count`` connections, each sending its request head one byte every ``interval_s``,
    and starting again when cut off, for ``seconds``."""
    filler = b"X-Slow: " + b"a" * 4000 + b"\r\n"

    def one(tally: Tally, until: float) -> Awaitable[None]:
        return _drip(url, tally, HEAD, filler, interval_s, until)

    return await _waves(count, seconds, one)


async def slow_body(url: str, count: int, seconds: float, interval_s: float = 1.0) -> Tally:
    """``count`` connections, each sending a complete head, then its body one byte every
    ``interval_s``, starting again when cut off, for ``seconds``."""
    body = json.dumps({"sql": "SELECT 1", "pad": "x" * 4000}).encode()
    head = HEAD + b"Content-Length: %d\r\n\r\n" % len(body)

    def one(tally: Tally, until: float) -> Awaitable[None]:
        return _drip(url, tally, head, body, interval_s, until)

    return await _waves(count, seconds, one)


async def _waves(
    count: int, seconds: float, one: Callable[[Tally, float], Awaitable[None]]
) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds

    async def keep_one() -> None:
        while time.monotonic() < until:
            await one(tally, until)
            await asyncio.sleep(0.05)

    await _ramp(count, keep_one)
    return tally


async def _ramp(count: int, task: Callable[[], Awaitable[None]]) -> None:
    """``count`` copies of ``task``, started over about a second (no SYN burst)."""
    tasks = []
    for i in range(count):
        tasks.append(asyncio.ensure_future(task()))
        if i % 50 == 49:
            await asyncio.sleep(0.02)
    await asyncio.gather(*tasks)


async def idle_flood(url: str, count: int, seconds: float, *, keepalive: bool = True) -> Tally:
    """``count`` connections held open doing nothing, reopened when the server closes one, for
    ``seconds``. With ``keepalive`` each first makes one request (a keep-alive connection an
    agent left idle); without, it never sends a byte."""
    tally = Tally()
    until = time.monotonic() + seconds

    async def hold() -> None:
        while time.monotonic() < until:
            streams = await _connect(url, tally)
            if streams is None:
                await asyncio.sleep(0.5)
                continue
            reader, writer = streams
            started = time.monotonic()
            answer = b""
            left = False
            try:
                if keepalive:
                    writer.write(KEEPALIVE_PROBE)
                    answer = await asyncio.wait_for(reader.read(65536), until - time.monotonic())
                # now idle: wait for the server to close the connection, or the end
                rest = await asyncio.wait_for(_read_all(reader), max(0.1, until - time.monotonic()))
                answer = answer or rest
            except TimeoutError:
                left = True
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()
            tally.closed(started, answer, left=left)

    await _ramp(count, hold)
    return tally


async def disconnecting(
    url: str, count: int, seconds: float, *, sql: str = BIG_READ, read_bytes: int = 4096
) -> Tally:
    """``count`` clients, each in a loop: send ``sql``, read ``read_bytes`` of the answer (0:
    none, leave while the statement runs), then close the socket without reading the rest."""
    tally = Tally()
    until = time.monotonic() + seconds
    body = json.dumps({"sql": sql}).encode()
    request = HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def leave() -> None:
        while time.monotonic() < until:
            streams = await _connect(url, tally)
            if streams is None:
                await asyncio.sleep(0.5)
                continue
            reader, writer = streams
            started = time.monotonic()
            answer = b""
            try:
                writer.write(request)
                if read_bytes:
                    while len(answer) < read_bytes:
                        chunk = await asyncio.wait_for(reader.read(read_bytes), 60)
                        if not chunk:
                            break
                        answer += chunk
                else:
                    await asyncio.sleep(0.3)  # the statement is running by now
            except (TimeoutError, ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()  # gone, without reading the rest
            tally.closed(started, answer)

    await _ramp(count, leave)
    return tally


ATTACKS: dict[str, Callable[[str, int, float], Awaitable[Tally]]] = {
    "slow_head": slow_head,
    "slow_body": slow_body,
    "idle_flood": idle_flood,
    "disconnecting": disconnecting,
    "leaving_slow_read": lambda url, count, seconds: disconnecting(
        url, count, seconds, sql=SLOW_READ, read_bytes=0
    ),
}


def main(argv: list[str]) -> int:
    attack, url, seconds = argv[0], argv[1], float(argv[2])
    count = int(argv[3]) if len(argv) > 3 else 300
    raise_fd_limit(count + 256)
    tally = asyncio.run(ATTACKS[attack](url, count, seconds))
    print(json.dumps(tally.to_dict()), flush=True)
    return 0


# -- the server process, as /proc shows it ---------------------------------------------------


@dataclass(frozen=True)
class Usage:
    rss: int  # bytes
    threads: int
    fds: int


def usage(pid: int) -> Usage:
    """Resident memory, threads and open files of process ``pid``."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    fds = sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    return Usage(int(fields["VmRSS"][0]) * 1024, int(fields["Threads"][0]), fds)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
