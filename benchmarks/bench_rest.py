"""rest: the sidecar over HTTP, as agents reach it (the real uvicorn server, in this process).

Two cases on a DuckLake lake with one 10,000-row table:

- ``rest_latency``: one point read, ``SELECT * FROM t WHERE id = ?`` with a bound parameter, made
  by an agent in ANOTHER process (``benchmarks.rest_agent``) with lakewarden's REST client on a
  keep-alive connection, vs ``session.sql`` of the same statement on a persistent in-process
  session of the same warden, and vs the floor: the same client making the same POST to a no-op
  ASGI app served by the same uvicorn configuration, which answers a JSON body of the same size.
  The three are interleaved call by call. The agent times its own requests, so the pipe that
  tells it when to go is not counted. The target is the server's OWN added time:
  p50(REST) - p50(SDK) - p50(floor) <= 0.3 ms. What any HTTP request costs on this machine (the
  client, the kernel's loopback, uvicorn, two process wake-ups) is in the floor, not in the
  share. Diagnostics: REST - SDK (the added time an agent sees), the share in each third of the
  run, the floor again with the agent idle first for as long as a statement takes (its code runs
  colder after a wait, and in the REST case it always waits), ``GET /healthz`` through FastAPI's
  stack with the same client, and the JSON rendering of the result.
  The agent runs in its own process because agents do: a client thread in the server's process
  would compete with the server for the GIL and charge that to the sidecar.
- ``rest_throughput``: 8 concurrent clients (threads, each its own ``httpx.Client``) send a mix
  of 80% point reads and 20% one-row INSERTs as fast as they can. Rounds of 8 clients alternate
  with rounds of 1 client (the baseline); each sample is a round's wall time per completed
  statement. The target (<= 1.0) says concurrency must not cost throughput: 8 clients together
  complete at least as many statements per second as one. Every response must be 200 and every
  acknowledged INSERT must be in the table (checked on the table and on the tracker's count).
  These clients run in the server's process and share its GIL: on a 2-core machine this
  understates what the sidecar serves to clients in other processes.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import Receive, Scope, Send

import lakewarden
from benchmarks import common
from benchmarks.mixed_load import (
    COLUMNS,
    READ,
    READ_SHARE,
    ROWS,
    TABLE,
    Tally,
    rest_step,
    run_round,
)
from lakewarden.intake.jsonvalues import result_json
from lakewarden.intake.server import ServerThread, uvicorn_config
from lakewarden.wire import AGENT_HEADER

SHARE_TARGET_S = 0.3e-3
THROUGHPUT_TARGET = 1.0
POINT_ID = 4242
CLIENTS = 8
# (repeats, warm-up) of the latency case; (rounds, seconds per round) of the throughput case:
# 5 rounds of 2 s give the 8 clients 10 s in all, and the single client as much.
LATENCY, QUICK_LATENCY = (600, 30), (30, 5)
ROUNDS, QUICK_ROUNDS = (5, 2.0), (2, 0.5)


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={AGENT_HEADER: common.BENCH_AGENT}, timeout=60.0)


def _post(http: httpx.Client, sql: str, params: list[Any]) -> dict[str, Any]:
    response = http.post("/v1/sql", json={"sql": sql, "params": params})
    if response.status_code != 200:
        raise RuntimeError(f"{sql!r}: HTTP {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


def _percentiles(samples: Sequence[float]) -> str:
    return f"p50 {common.median_s(samples)}, p95 {common.fmt_s(common.percentile(samples, 95))}"


# -- latency -------------------------------------------------------------------------------------


class RemoteAgent:
    """``benchmarks.rest_agent`` in a child process: one request per call, timed over there."""

    def __init__(self, url: str, floor_url: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.rest_agent",
                url,
                floor_url,
                common.BENCH_AGENT,
                READ,
                str(POINT_ID),
            ],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, kind: str) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(kind + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the agent process failed on {kind!r} (see its stderr)")
        return float(answer)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@contextmanager
def floor_server(answer: bytes, settings: lakewarden.Settings) -> Iterator[str]:
    """A server that answers ``answer`` to every request with no application code, served as
    lakewarden serves its app (``uvicorn_config``): the cost of any such request here."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":  # startup first
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    server = uvicorn.Server(uvicorn_config(app, settings, "127.0.0.1", 0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the floor server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def latency(warden: lakewarden.Warden, url: str, quick: bool) -> common.Outcome:
    repeats, warmup = QUICK_LATENCY if quick else LATENCY
    session = warden.session(common.BENCH_AGENT)
    sdk_result = session.sql(READ, [POINT_ID])
    with httpx.Client(base_url=url, headers={AGENT_HEADER: common.BENCH_AGENT}) as http:
        answer = http.post("/v1/sql", json={"sql": READ, "params": [POINT_ID]}).content
    if json.loads(answer)["rows"] != result_json(sdk_result)["rows"]:
        raise RuntimeError(f"REST and SDK disagree: {answer!r} vs {sdk_result}")
    gap = _median([_timed(lambda: session.sql(READ, [POINT_ID])) for _ in range(warmup)])
    with floor_server(answer, warden.settings) as floor_url:
        agent = RemoteAgent(url, floor_url)
        try:
            times = common.measure(
                {
                    "sdk": lambda: session.sql(READ, [POINT_ID]),
                    "rest": lambda: agent.call("client"),
                    "floor": lambda: agent.call("floor"),
                    "floor_idle": lambda: agent.call(f"floor {gap!r}"),
                    "healthz": lambda: agent.call("healthz"),
                    "json": lambda: result_json(sdk_result),
                },
                repeats=repeats,
                warmup=warmup,
                self_timed=frozenset({"rest", "floor", "floor_idle", "healthz"}),
            )
        finally:
            agent.close()
            session.close()
    rest, sdk, floor = times["rest"], times["sdk"], times["floor"]
    return common.Outcome(
        name="rest_latency",
        baseline=f"session.sql({READ!r}, [id]) in-process, persistent session, {ROWS:,} rows",
        subject=(
            "the same read by an agent in another process: lakewarden.client session.sql, "
            "POST /v1/sql on a keep-alive connection, JSON response"
        ),
        baseline_s=sdk,
        subject_s=rest,
        floor_s=floor,
        target=SHARE_TARGET_S,
        target_kind="share",
        extra={
            "SDK": _percentiles(sdk),
            "REST, lakewarden.client": _percentiles(rest),
            (
                f"floor: the same client and POST, a no-op app answering {len(answer)} bytes "
                "of JSON, the same uvicorn configuration"
            ): _percentiles(floor),
            "REST - SDK (the added time an agent sees), p50 / p95": (
                f"{common.fmt_s(_median(rest) - _median(sdk))} / "
                f"{common.fmt_s(common.percentile(rest, 95) - common.percentile(sdk, 95))}"
            ),
            "server's own share (REST - SDK - floor) at p50 in each third of the run": ", ".join(
                common.fmt_s(_median(r) - _median(s) - _median(f))
                for r, s, f in zip(_thirds(rest), _thirds(sdk), _thirds(floor), strict=True)
            ),
            (
                f"floor after the agent sat idle for {common.fmt_s(gap)} (a statement's time, as "
                "it waits for one); and REST - SDK - this floor"
            ): (
                f"{_percentiles(times['floor_idle'])}; "
                f"{common.fmt_s(_median(rest) - _median(sdk) - _median(times['floor_idle']))}"
            ),
            "GET /healthz, the same client (FastAPI's stack, no lakewarden work)": (
                _percentiles(times["healthz"])
            ),
            "result_json() of the 1-row result, in-process": common.median_s(times["json"]),
        },
    )


def _median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _thirds(samples: list[float]) -> list[list[float]]:
    size = len(samples) // 3
    return [samples[:size], samples[size : 2 * size], samples[2 * size :]]


# -- throughput ----------------------------------------------------------------------------------


class Load:
    """``CLIENTS`` persistent clients; a round runs the first ``n`` of them for ``seconds``."""

    def __init__(self, url: str) -> None:
        self.clients = [_client(url) for _ in range(CLIENTS)]
        self.rngs = [random.Random(k) for k in range(CLIENTS)]
        self.next_id = [(k + 1) * 1_000_000_000 for k in range(CLIENTS)]  # unique insert ids
        self.total = Tally()

    def round(self, n: int, seconds: float) -> tuple[float, Tally]:
        """Wall seconds of the round (until the last in-flight statement returns) and tally."""
        wall, tally = run_round(self._work, n, seconds)
        self.total.add(tally)
        return wall, tally

    def _work(self, k: int, tally: Tally, stop: threading.Event) -> None:
        while not stop.is_set():
            rest_step(self.clients[k], self.rngs[k], self.next_id, k, tally, "client")

    def close(self) -> None:
        for http in self.clients:
            http.close()


def throughput(warden: lakewarden.Warden, url: str, quick: bool) -> common.Outcome:
    rounds, seconds = QUICK_ROUNDS if quick else ROUNDS
    load = Load(url)
    per_statement: dict[int, list[float]] = {1: [], CLIENTS: []}
    eight = Tally()
    eight_wall = 0.0
    try:
        load.round(CLIENTS, min(seconds, 1.0))  # warm-up: connections, caches, threadpool
        for i in range(2 * rounds):
            n = (1, CLIENTS, CLIENTS, 1)[i % 4]  # 1, 8, 8, 1, 1, 8, ...: neither always first
            wall, tally = load.round(n, seconds)
            done = tally.reads + tally.inserts
            per_statement[n].append(wall / max(done, 1))
            if n == CLIENTS:
                eight.add(tally)
                eight_wall += wall
    finally:
        load.close()
    total = load.total
    if total.errors:
        raise RuntimeError(f"{len(total.errors)} failed statements, first: {total.errors[0]}")
    cur = warden.engine.cursor()
    try:
        row = cur.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    finally:
        cur.close()
    in_table = int(row[0]) if row else -1
    tracked = warden.table(TABLE).rows
    if in_table != ROWS + total.inserts or tracked != in_table:
        raise RuntimeError(
            f"{total.inserts} INSERTs acknowledged but the table holds {in_table - ROWS} new "
            f"rows (tracker: {tracked - ROWS})"
        )
    done = eight.reads + eight.inserts
    return common.Outcome(
        name="rest_throughput",
        baseline=(
            f"1 client, POST /v1/sql, {READ_SHARE:.0%} point reads / {1 - READ_SHARE:.0%} "
            f"one-row INSERTs, {rounds} rounds of {seconds:g} s; s per completed statement"
        ),
        subject=f"{CLIENTS} concurrent clients, the same mix, interleaved rounds",
        baseline_s=per_statement[1],
        subject_s=per_statement[CLIENTS],
        target=THROUGHPUT_TARGET,
        extra={
            f"{CLIENTS} clients, {eight_wall:.1f} s in all": (
                f"{done / eight_wall:.1f} statements/s ({eight.reads / eight_wall:.1f} reads/s, "
                f"{eight.inserts / eight_wall:.1f} inserts/s)"
            ),
            "1 client": f"{1 / statistics.median(per_statement[1]):.1f} statements/s (median)",
            f"latency under {CLIENTS} clients": (
                f"read {_percentiles(eight.read_s)}; insert {_percentiles(eight.insert_s)}"
            ),
            "errors, whole run": str(len(total.errors)),
            "INSERTs acknowledged / rows added (table, tracker)": (
                f"{total.inserts} / {in_table - ROWS}, {tracked - ROWS}"
            ),
        },
    )


def run(quick: bool = False) -> list[common.Outcome]:
    with common.temp_lake() as warden:
        common.build_table(warden, TABLE, ROWS, COLUMNS)
        server = ServerThread(warden, port=0).start()
        try:
            return [latency(warden, server.url, quick), throughput(warden, server.url, quick)]
        finally:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
