"""The sidecar's HTTP server: REST, MCP (``/mcp``), ``/metrics``, ``/healthz``, ``/readyz``.

One ASGI app per Warden, one port. :func:`run` serves it with uvicorn in the foreground; on
SIGTERM/SIGINT it drains first (:mod:`lakewarden.intake.drain`), then the warden closes;
:class:`ServerThread` serves it in a background thread (demo, tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lakewarden import __version__
from lakewarden.core.monitor import Monitor
from lakewarden.core.warden import Warden
from lakewarden.errors import ConfigurationError
from lakewarden.intake.connections import raise_open_files, server_protocol
from lakewarden.intake.drain import Drain
from lakewarden.intake.limits import bounded_body, cap_address_space, token_gate
from lakewarden.intake.mcp import build_mcp, streamable_http
from lakewarden.intake.openapi import install as install_openapi
from lakewarden.intake.rest import (
    build_router,
    fast_path,
    install_error_handlers,
    internal_error_response,
    sql_endpoint,
)
from lakewarden.settings import Settings
from lakewarden.store.deadline import WATCHDOG

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ServerThread",
    "check_bind",
    "create_app",
    "mcp_first",
    "run",
    "uvicorn_config",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7117
# Seconds the statements in flight at SIGTERM get to finish, while new ones are refused with 503;
# then uvicorn stops, and waits as long again for requests that are still open before it drops
# them. Statements still running after that end at their own time limit. Both fit Kubernetes'
# default terminationGracePeriodSeconds of 30.
GRACEFUL_SHUTDOWN_S = 10
# Threads running agent statements at once (more requests wait for one). Statements mostly
# wait on DuckDB, which has its own thread limit (LAKEWARDEN_THREADS); the bound keeps a flood
# of requests from growing threads without end, as anyio's default of 40 did before.
STATEMENT_WORKERS = 32
# How long /readyz waits for the engine to answer SELECT 1 before it reports not ready.
READY_PROBE_S = 2.0


def prestarted(threads: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads all exist from the start.

    Under the address-space cap (LAKEWARDEN_ADDRESS_SPACE_LIMIT) a thread started later may
    find no room for its stack: the C allocator keeps the address space of a large statement
    mapped after it ends (measured: 4 GB after ``list_sum(range(300000000))``) and reuses it
    for the engine, but not for stacks. Every thread a request needs is therefore started
    here, before any request, and never ends (a ``ThreadPoolExecutor`` keeps its threads).
    """
    pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
    gate = threading.Event()
    # A pool starts a new thread for each task while none is idle: blocked tasks force them all.
    started = [pool.submit(gate.wait) for _ in range(threads)]
    gate.set()
    for future in started:
        future.result()
    return pool


def create_app(warden: Warden, drain: Drain | None = None) -> ASGIApp:
    drain = drain or Drain()
    workers = prestarted(STATEMENT_WORKERS, "lakewarden-sql")
    prober = prestarted(1, "lakewarden-ready")  # /readyz answers even when workers are busy
    WATCHDOG.start()
    mcp_server = build_mcp(warden, workers=workers)
    mcp_endpoint = token_gate(streamable_http(mcp_server), warden)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        monitor = Monitor(warden).start()
        try:
            async with mcp_server.session_manager.run():
                app.state.ready = True
                yield
                app.state.ready = False
        finally:
            monitor.stop()
            workers.shutdown(wait=True)  # uvicorn has drained the requests by now
            prober.shutdown(wait=True)

    app = FastAPI(title="lakewarden", version=__version__, lifespan=lifespan)
    app.state.ready = False
    install_error_handlers(app, warden)
    sql = sql_endpoint(warden, workers)
    app.include_router(build_router(warden, sql, workers))
    install_openapi(app, tokens=warden.policy.requires_tokens)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if not app.state.ready or drain.draining:
            return JSONResponse({"ready": False, "reason": "starting or stopping"}, 503)
        loop = asyncio.get_running_loop()
        try:
            failure = await asyncio.wait_for(
                loop.run_in_executor(prober, warden.engine.probe, READY_PROBE_S),
                READY_PROBE_S + 1,
            )
        except TimeoutError:
            failure = f"the engine did not answer SELECT 1 within {READY_PROBE_S:g} s"
        if failure is not None:
            return JSONResponse({"ready": False, "reason": f"engine: {failure}"}, 503)
        return JSONResponse({"ready": True})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(warden.telemetry.prometheus_text(), media_type=CONTENT_TYPE_LATEST)

    # The body cap wraps everything, the fast paths included: no request body is read past it,
    # and none is read at all when its declared length is over it.
    settings = warden.settings
    return drain.wrap(
        bounded_body(
            mcp_first(fast_path(app, sql), mcp_endpoint),
            settings.max_body_bytes,
            settings.request_read_timeout_s,
        )
    )


MCP_PATHS = frozenset({"/mcp", "/mcp/"})


def mcp_first(app: ASGIApp, endpoint: ASGIApp) -> ASGIApp:
    """``app`` with the MCP endpoint (``/mcp`` and ``/mcp/``) dispatched before the framework.

    Mounted in FastAPI, every MCP request went through FastAPI's middleware and routing, then
    the SDK's own Starlette app and its route: about 0.5 ms per tool call on these machines
    (``python -m benchmarks.mcp_probe``), which REST's ``POST /v1/sql`` does not pay either
    (see :func:`~lakewarden.intake.rest.fast_path`). A failure the SDK does not answer itself
    is a 500 ``internal_error``, as under FastAPI.
    """

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in MCP_PATHS:
            await app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await endpoint(scope, receive, sending)
        except Exception:
            if not started:
                await internal_error_response(scope)(scope, receive, send)
            raise

    return dispatch


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(warden: Warden, host: str) -> None:
    """Refuse to expose a lake without tokens, or to start while tokens are missing."""
    missing = warden.policy.missing_tokens()
    if missing:
        raise ConfigurationError(
            "the policy names token variables that are not set: " + ", ".join(missing)
        )
    if not is_loopback(host) and not warden.policy.requires_tokens:
        raise ConfigurationError(
            f"refusing to listen on {host}: without agent tokens in the policy the server is "
            "open to every caller, so it binds loopback only (give a policy with token_env)"
        )


def uvicorn_config(app: ASGIApp, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """How the sidecar serves ``app``; the REST benchmark serves a no-op app the same way to
    measure what any request costs before lakewarden's own work."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
        server_header=False,  # no software banner for whoever can reach the port
        # Bounds checked while a request arrives, before any authentication work: request
        # head size (the same knob for h11 and the httptools protocol), its time, and
        # connections, counted by the protocol (uvicorn's limit_concurrency refused every
        # agent's requests while idle connections filled it; see intake.connections).
        http=server_protocol(
            max_connections=settings.max_connections,
            head_timeout_s=settings.request_read_timeout_s,
            stall_timeout_s=settings.request_read_timeout_s,
        ),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=None,
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]
    )


def _config(warden: Warden, host: str, port: int, drain: Drain | None = None) -> uvicorn.Config:
    return uvicorn_config(create_app(warden, drain), warden.settings, host, port)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once it has drained its requests, which would end the
    process before the warden flushes telemetry and state; the signal is handled here instead:
    drain (refuse new statements, finish those in flight), close the warden, exit 0."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self.drain.start()
        threading.Thread(target=self._stop_when_drained, name="lakewarden-drain").start()

    def _stop_when_drained(self) -> None:
        if not self.drain.wait(GRACEFUL_SHUTDOWN_S):
            log.warning(
                "%d requests still in flight after %d s of draining; stopping anyway",
                self.drain.in_flight,
                GRACEFUL_SHUTDOWN_S,
            )
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(warden: Warden, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve until SIGTERM/SIGINT, then close the warden (flushing telemetry)."""
    check_bind(warden, host)
    cap_address_space(warden.settings.address_space_bytes())
    raise_open_files(warden.settings.max_connections)
    drain = Drain()
    try:
        _Server(_config(warden, host, port, drain), drain).run()
    finally:
        warden.close()


class ServerThread:
    """The app served by uvicorn in a daemon thread; ``port=0`` picks a free port."""

    def __init__(self, warden: Warden, host: str = DEFAULT_HOST, port: int = 0) -> None:
        check_bind(warden, host)
        self.server = uvicorn.Server(_config(warden, host, port))
        self.thread = threading.Thread(target=self.server.run, name="lakewarden-http", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the lakewarden server did not start")
            time.sleep(0.02)
        sock: socket.socket = self.server.servers[0].sockets[0]
        self.port = int(sock.getsockname()[1])
        with httpx.Client(base_url=self.url, timeout=5) as http:
            while http.get("/readyz").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the lakewarden server never became ready")
                time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
