"""mcp_query: lakewarden's MCP ``query`` tool against mcp-server-motherduck, the ungoverned peer.

Every server runs in a process of its own, as ``lakewarden serve`` and ``mcp-server-motherduck
--transport http`` do, on loopback; this process is the agent: one persistent MCP client
session per server (``mcp.Client`` over streamable HTTP), all driven from one event loop. The
statement is a small point query, ``SELECT * FROM t WHERE id = 4242`` on a 10,000-row,
10-column table, the same text for every server. Calls are interleaved (order rotating and
flipping) and each is timed inside the event loop, so the hand-off from this benchmark's thread
to the loop is not counted.

- ``mcp_query[duckdb-file]``: lakewarden on a plain DuckDB file vs motherduck with a persistent
  read-only connection (``--no-ephemeral-connections``) on a byte-for-byte copy of that file
  (a DuckDB file admits one writing process: each server gets its own copy). Target <= 0.8.
- ``mcp_query[ducklake]``: lakewarden on a DuckLake lake holding the same table vs motherduck's
  default mode (read-only, a new connection per query) on the DuckDB file. Target <= 1.0.

mcp-server-motherduck is installed, pinned, in a virtual environment of its own under the user's
cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, ``lakewarden-benchmarks/``), never in the
project's; the first run takes about a minute for it.

Each subject server, like each baseline, serves its own MCP client and nothing else; the
diagnostics run on lakewarden servers of their own ("lw diag", on another copy of the file, and
"lw lake diag", on a second lake built the same way).

Diagnostics: what MCP adds over REST for the same statement on the same lakewarden server
(``POST /v1/sql`` with an ``httpx.AsyncClient``, the HTTP client the MCP SDK uses). ``mcp.Client``
negotiates the per-request 2026-07-28 protocol with lakewarden (no initialize, no session; with
motherduck it falls back to the initialize handshake), so the split uses the same protocol: the
MCP client SDK's share (the same ``tools/call`` sent as a bare 2026-07-28 JSON-RPC POST) and the
server's. The handshake era, which most clients in the field still speak, is measured beside it:
a bare ``tools/call`` and ``ping`` in a 2025-06-18 session. Then what the shipped transport
options are worth, on servers that differ from the shipped one in one option each (via
``benchmarks.mcp_variant_server``) and serve the same request mix as "lw diag": SSE streams
instead of JSON responses, and stateless instead of sessions, each through ``mcp.Client`` and
through a bare 2025-06-18 session; and, for scale,
what a tool call costs through the MCP SDK alone (a bare ``MCPServer`` whose ``query`` tool
answers a fixed result, served with the same transport options). A smoke run (``--quick``)
leaves those extra servers out. ``python -m benchmarks.mcp_probe`` times the steps inside the
server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

import lakewarden
from benchmarks import common

MOTHERDUCK = "mcp-server-motherduck==1.1.0"
FILE_TARGET = 0.8  # lakewarden on a DuckDB file <= 0.8x motherduck, persistent connection
LAKE_TARGET = 1.0  # lakewarden on DuckLake <= 1.0x motherduck's default mode
TABLE = "t"
ROWS = 10_000
COLUMNS = 10
POINT_ID = 4242
QUERY = f"SELECT * FROM {TABLE} WHERE id = {POINT_ID}"
REPEATS, QUICK_REPEATS = 300, 15
WARMUP, QUICK_WARMUP = 20, 3
MCP_ACCEPT = "application/json, text/event-stream"
HANDSHAKE_VERSION = "2025-06-18"  # initialize, then a session
PER_REQUEST_VERSION = "2026-07-28"  # every request carries the envelope; no session
START_TIMEOUT_S = 90
ROOT = Path(__file__).resolve().parents[1]  # for python -m benchmarks.*


# -- mcp-server-motherduck in its own virtual environment ----------------------------------------


def motherduck_venv() -> Path:
    """The virtual environment holding mcp-server-motherduck, made on first use."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = cache / "lakewarden-benchmarks" / MOTHERDUCK.replace("==", "-")
    done = home / ".installed"
    if not done.exists():
        if home.exists():
            shutil.rmtree(home)  # a half-made one from an interrupted install
        print(f"installing {MOTHERDUCK} into {home} (first run only)", flush=True)
        venv.EnvBuilder(with_pip=True).create(home)
        pip = [str(home / "bin" / "python"), "-m", "pip", "install", "-q", MOTHERDUCK]
        done_pip = subprocess.run(pip, capture_output=True, text=True)
        if done_pip.returncode != 0:
            raise RuntimeError(f"could not install {MOTHERDUCK}: {done_pip.stderr[-2000:]}")
        done.write_text(MOTHERDUCK + "\n")
    return home


# -- servers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    # The production defaults, whatever the caller's shell exports (as temp_lake does).
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LAKEWARDEN_"))}


@dataclass(frozen=True)
class Spec:
    """A server to start: its command, its address and the path that answers once it is up."""

    name: str
    argv: list[str]
    url: str
    ready: str


def lakewarden_spec(name: str, target: list[str], variant: str | None = None) -> Spec:
    port = free_port()
    if variant:
        module = ["-m", "benchmarks.mcp_variant_server", variant]
    else:
        module = ["-m", "lakewarden.intake.cli", "serve"]
    argv = [sys.executable, *module, *target, "--port", str(port)]
    return Spec(name, argv, f"http://127.0.0.1:{port}", "/readyz")


def motherduck_spec(name: str, home: Path, db: Path, persistent: bool) -> Spec:
    port = free_port()
    argv = [str(home / "bin" / "mcp-server-motherduck"), "--transport", "http"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--db-path", str(db)]
    if persistent:
        argv.append("--no-ephemeral-connections")
    # Its /mcp answers a plain GET with a client error once it is up.
    return Spec(name, argv, f"http://127.0.0.1:{port}", "/mcp")


@contextmanager
def servers(specs: Sequence[Spec], logs: Path) -> Iterator[dict[str, str]]:
    """Every server started at once, then waited for; name -> base URL."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for spec in specs:
            with (logs / f"{spec.name}.log").open("w") as out:
                procs[spec.name] = subprocess.Popen(
                    spec.argv, cwd=ROOT, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT
                )
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=2) as http:
            for spec in specs:
                _wait(http, spec, procs[spec.name], logs / f"{spec.name}.log", deadline)
        yield {spec.name: spec.url for spec in specs}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(
    http: httpx.Client, spec: Spec, proc: subprocess.Popen[bytes], log: Path, deadline: float
) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.name} exited {proc.returncode}: {log.read_text()}")
        try:
            if http.get(spec.url + spec.ready).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{spec.name} never became ready: {log.read_text()}")
        time.sleep(0.1)


# -- the agent side ----------------------------------------------------------------------------

# What a 2026-07-28 request carries in params._meta (as mcp.Client sends it).
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": PER_REQUEST_VERSION,
    "io.modelcontextprotocol/clientInfo": {"name": "lakewarden-benchmark", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


class RawMCP:
    """A bare JSON-RPC client over streamable HTTP (no MCP client SDK), in either protocol era:
    a session opened by ``initialize`` (``HANDSHAKE_VERSION``), or self-contained requests that
    carry the protocol envelope in ``params._meta`` and its routing headers
    (``PER_REQUEST_VERSION``), as ``mcp.Client`` sends them."""

    def __init__(self, url: str, protocol: str = HANDSHAKE_VERSION) -> None:
        self.url = url + "/mcp/"
        self.protocol = protocol
        self.http = httpx.AsyncClient(timeout=60, headers={"Accept": MCP_ACCEPT})
        self.next_id = 0
        self.session: dict[str, str] = {}

    async def start(self) -> None:
        if self.protocol == PER_REQUEST_VERSION:
            self.session = {"mcp-protocol-version": self.protocol}
            return
        response = await self._post(
            "initialize",
            {
                "protocolVersion": self.protocol,
                "capabilities": {},
                "clientInfo": {"name": "lakewarden-benchmark", "version": "0"},
            },
        )
        session_id = response.headers.get("mcp-session-id")
        self.session = {"mcp-protocol-version": self.protocol}
        if session_id:
            self.session["mcp-session-id"] = session_id
        await self.http.post(
            self.url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=self.session,
        )

    async def _post(self, method: str, params: dict[str, Any] | None) -> httpx.Response:
        self.next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        headers = self.session
        if self.protocol == PER_REQUEST_VERSION:
            params = {**(params or {}), "_meta": ENVELOPE}
            headers = {**headers, "mcp-method": method}
            if "name" in params:
                headers["mcp-name"] = params["name"]
        if params is not None:
            message["params"] = params
        response = await self.http.post(self.url, json=message, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{method}: HTTP {response.status_code} {response.text[:300]}")
        return response

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self._post(method, params)
        text = response.text
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            text = next(
                line[len("data:") :] for line in text.splitlines() if line.startswith("data:")
            )
        body: dict[str, Any] = json.loads(text)
        if "error" in body or body.get("result", {}).get("isError"):
            raise RuntimeError(f"{method}: {text[:300]}")
        return body

    async def close(self) -> None:
        await self.http.aclose()


class Agent:
    """The MCP clients, REST clients and bare sessions, all on one event loop (a portal)."""

    def __init__(self, portal: BlockingPortal, stack: ExitStack) -> None:
        self.portal = portal
        self.stack = stack

    def mcp(self, url: str, headers: dict[str, str] | None) -> Client:
        http = create_mcp_http_client(headers=headers or {})
        client = Client(streamable_http_client(url, http_client=http))
        return self.stack.enter_context(self.portal.wrap_async_context_manager(client))

    def rest(self, url: str) -> httpx.AsyncClient:
        http = httpx.AsyncClient(base_url=url, timeout=60)
        self.stack.callback(self.portal.call, http.aclose)
        return http

    def raw(self, url: str, protocol: str = HANDSHAKE_VERSION) -> RawMCP:
        session = RawMCP(url, protocol)
        self.portal.call(session.start)
        self.stack.callback(self.portal.call, session.close)
        return session

    def timed(
        self, call: Callable[[], Awaitable[Any]], check: Callable[[Any], None]
    ) -> Callable[[], float]:
        async def once() -> float:
            start = time.perf_counter()
            answer = await call()
            elapsed = time.perf_counter() - start
            check(answer)
            return elapsed

        return lambda: self.portal.call(once)


def _lakewarden_rows(result: Any) -> None:
    if result.is_error or result.structured_content.get("row_count") != 1:
        raise RuntimeError(f"lakewarden query: {result.content}")


def _motherduck_rows(result: Any) -> None:
    if result.is_error or json.loads(result.content[0].text).get("rowCount") != 1:
        raise RuntimeError(f"motherduck execute_query: {result.content}")


def _rest_rows(response: httpx.Response) -> None:
    if response.status_code != 200 or response.json()["row_count"] != 1:
        raise RuntimeError(f"REST: HTTP {response.status_code} {response.text[:300]}")


def _raw_rows(body: dict[str, Any]) -> None:
    if body["result"]["structuredContent"]["row_count"] != 1:
        raise RuntimeError(f"bare tools/call: {body}")


# -- the case --------------------------------------------------------------------------------------


def _build(folder: Path) -> tuple[Path, Path]:
    """The table in a DuckLake lake and in a DuckDB file (the file closed, so it can be copied)."""
    lake, file = _build_lake(folder / "lake"), folder / "lw" / "bench.duckdb"
    with lakewarden.open(
        file, telemetry=lakewarden.Telemetry(env={}), settings=lakewarden.Settings()
    ) as warden:
        common.build_table(warden, TABLE, ROWS, COLUMNS)
    return lake, file


def _build_lake(folder: Path) -> Path:
    """A DuckLake lake holding the table (a lake is not copied: its catalog names its folder)."""
    with lakewarden.open(
        folder, telemetry=lakewarden.Telemetry(env={}), settings=lakewarden.Settings()
    ) as warden:
        common.build_table(warden, TABLE, ROWS, COLUMNS)
    return folder


def _copy(file: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(file, folder / file.name))


def run(quick: bool = False) -> list[common.Outcome]:
    repeats = QUICK_REPEATS if quick else REPEATS
    warmup = QUICK_WARMUP if quick else WARMUP
    home = motherduck_venv()
    agent_header = {"X-Lakewarden-Agent": common.BENCH_AGENT}
    with tempfile.TemporaryDirectory(prefix="lakewarden-bench-mcp-") as tmp:
        root = Path(tmp)
        lake, file = _build(root)
        md_file = _copy(file, root / "motherduck")
        specs = [
            lakewarden_spec("lw file", ["--duckdb", str(file)]),
            lakewarden_spec("lw lake", ["--lake", str(lake)]),
            motherduck_spec("md persistent", home, md_file, persistent=True),
            motherduck_spec("md default", home, md_file, persistent=False),
        ]
        # The subjects, like the baselines, serve their own MCP client and nothing else: the
        # diagnostics run on servers of their own. Other calls to the same process between
        # two measured ones keep it warm and lower its p50, lakewarden's more than
        # motherduck's (measured with four more clients per server: -0.62 ms and -0.31 ms),
        # so a subject that also served the diagnostics was measured warmer than its
        # baseline. The shipped server and the transport variants serve the same mix, so they
        # compare with each other; a smoke run starts fewer processes.
        diagnosed = ("lw diag",) if quick else ("lw diag", "lw sse", "lw stateless")
        for name in diagnosed:
            variant = None if name == "lw diag" else name.removeprefix("lw ")
            copy = _copy(file, root / name.replace(" ", "-"))
            specs.append(lakewarden_spec(name, ["--duckdb", str(copy)], variant))
        lake_diag = _build_lake(root / "lake-diag")
        specs.append(lakewarden_spec("lw lake diag", ["--lake", str(lake_diag)]))
        if not quick:
            specs.append(lakewarden_spec("sdk floor", [], "floor"))
        with ExitStack() as stack:
            urls = stack.enter_context(servers(specs, root))
            portal = stack.enter_context(start_blocking_portal())
            agent = Agent(portal, stack)
            clients = {
                name: agent.mcp(url + "/mcp", None)
                if name.startswith("md")
                else agent.mcp(url + "/mcp/", agent_header)
                for name, url in urls.items()
            }
            query = {"sql": QUERY}
            tool_call = {"name": "query", "arguments": query}
            fns: dict[str, Callable[[], object]] = {}
            for name, client in clients.items():
                if name.startswith("md"):
                    call = partial(client.call_tool, "execute_query", query)
                    fns[name] = agent.timed(call, _motherduck_rows)
                else:
                    call = partial(client.call_tool, "query", query)
                    fns[f"{name} mcp"] = agent.timed(call, _lakewarden_rows)
            for name in ("lw lake diag", *diagnosed):
                rest = agent.rest(urls[name])
                rest.headers.update(agent_header)
                fns[f"{name} rest"] = agent.timed(
                    partial(rest.post, "/v1/sql", json=query), _rest_rows
                )
            for name in (*diagnosed, "sdk floor"):
                if name not in urls:
                    continue
                per_request = agent.raw(urls[name], PER_REQUEST_VERSION)
                session = agent.raw(urls[name], HANDSHAKE_VERSION)
                for bare in (per_request, session):
                    bare.http.headers.update(agent_header)
                fns[f"{name} bare tools/call"] = agent.timed(
                    partial(per_request.request, "tools/call", tool_call), _raw_rows
                )
                fns[f"{name} session ping"] = agent.timed(
                    partial(session.request, "ping"), lambda _: None
                )
                fns[f"{name} healthz"] = agent.timed(
                    partial(session.http.get, urls[name] + "/healthz"),
                    lambda r: r.raise_for_status(),
                )
                if name != "sdk floor":
                    fns[f"{name} session tools/call"] = agent.timed(
                        partial(session.request, "tools/call", tool_call), _raw_rows
                    )
            times = common.measure(fns, repeats=repeats, warmup=warmup, self_timed=frozenset(fns))
            response_types: dict[str, str] = {
                f"{name} {protocol}": portal.call(_content_type, urls[name], protocol)
                for name in ("lw diag", "lw sse")
                if name in urls
                for protocol in (PER_REQUEST_VERSION, HANDSHAKE_VERSION)
            }
    return _outcomes(times, response_types)


async def _content_type(url: str, protocol: str) -> str:
    """What the server answers a tools/call with: an SSE stream or one JSON body."""
    session = RawMCP(url, protocol)
    try:
        await session.start()
        response = await session._post("tools/call", {"name": "query", "arguments": {"sql": QUERY}})
        return response.headers.get("content-type", "?").split(";")[0]
    finally:
        await session.close()


def _outcomes(
    times: dict[str, list[float]], response_types: dict[str, str]
) -> list[common.Outcome]:
    def p(name: str) -> float:
        return common.percentile(times[name], 50)

    def p50(name: str) -> str:
        return common.fmt_s(p(name))

    def tail(name: str) -> str:
        return f"p50 {p50(name)}, p95 {common.fmt_s(common.percentile(times[name], 95))}"

    def minus(a: str, b: str) -> str:
        return common.fmt_s(p(a) - p(b))

    overhead = {
        "MCP over REST, same server and statement (p50 MCP - p50 REST; a server of its own)": (
            f"{minus('lw diag mcp', 'lw diag rest')} on the DuckDB file "
            f"(MCP {p50('lw diag mcp')}, REST {p50('lw diag rest')}); "
            f"{minus('lw lake diag mcp', 'lw lake diag rest')} on the lake"
        ),
        "  client SDK (mcp.Client call_tool - the same 2026-07-28 tools/call as a bare POST)": (
            minus("lw diag mcp", "lw diag bare tools/call")
        ),
        "  server (bare 2026-07-28 tools/call - REST POST /v1/sql)": minus(
            "lw diag bare tools/call", "lw diag rest"
        ),
        "  server in a 2025-06-18 session instead (bare tools/call - REST POST /v1/sql)": minus(
            "lw diag session tools/call", "lw diag rest"
        ),
        "  server's fixed MCP cost per request in a session (bare ping - GET /healthz)": minus(
            "lw diag session ping", "lw diag healthz"
        ),
    }
    if "lw sse mcp" in times and "lw stateless mcp" in times:
        overhead |= {
            "  SSE streams instead of JSON responses (variant - shipped; same request mix)": (
                f"{minus('lw sse mcp', 'lw diag mcp')} via mcp.Client (2026-07-28), "
                f"{minus('lw sse session tools/call', 'lw diag session tools/call')} in a "
                f"2025-06-18 session (tools/call answered as "
                f"{response_types['lw diag ' + PER_REQUEST_VERSION]} / "
                f"{response_types['lw diag ' + HANDSHAKE_VERSION]} by the shipped server, "
                f"{response_types['lw sse ' + PER_REQUEST_VERSION]} / "
                f"{response_types['lw sse ' + HANDSHAKE_VERSION]} by the variant)"
            ),
            "  stateless instead of sessions (variant - shipped; same request mix)": (
                f"{minus('lw stateless mcp', 'lw diag mcp')} via mcp.Client (2026-07-28: no "
                "session either way), "
                f"{minus('lw stateless session tools/call', 'lw diag session tools/call')} "
                "for a 2025-06-18 client"
            ),
        }
    if "sdk floor mcp" in times:
        overhead |= {
            "  the MCP SDK alone (a bare MCPServer, fixed answer, JSON responses): tool call - "
            "its GET /healthz": (
                f"{minus('sdk floor mcp', 'sdk floor healthz')} via mcp.Client, "
                f"{minus('sdk floor bare tools/call', 'sdk floor healthz')} bare 2026-07-28; "
                f"ping in a 2025-06-18 session - healthz "
                f"{minus('sdk floor session ping', 'sdk floor healthz')}"
            ),
        }
    every = {
        "p50/p95 of every call": "; ".join(f"{name} {tail(name)}" for name in times),
    }
    return [
        common.Outcome(
            name="mcp_query[duckdb-file]",
            baseline=(
                "mcp-server-motherduck 1.1.0, execute_query, read-only persistent connection "
                f"(--no-ephemeral-connections), DuckDB file, {ROWS:,} rows"
            ),
            subject="lakewarden query tool, the same statement on a copy of the same file",
            baseline_s=times["md persistent"],
            subject_s=times["lw file mcp"],
            target=FILE_TARGET,
            extra={**overhead, **every},
        ),
        common.Outcome(
            name="mcp_query[ducklake]",
            baseline=(
                "mcp-server-motherduck 1.1.0, execute_query, default mode (read-only, a new "
                "connection per query), DuckDB file"
            ),
            subject="lakewarden query tool on a DuckLake lake holding the same table",
            baseline_s=times["md default"],
            subject_s=times["lw lake mcp"],
            target=LAKE_TARGET,
            extra={
                "motherduck, persistent connection, same run": tail("md persistent"),
                "lakewarden on the lake / motherduck persistent on the file": (
                    f"{p('lw lake mcp') / p('md persistent'):.3f}"
                ),
                "lakewarden REST on the lake (a server of its own), same run": tail(
                    "lw lake diag rest"
                ),
            },
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
