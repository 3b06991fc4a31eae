"""Where a lakewarden MCP ``tools/call`` spends its time on the server: a diagnostic, not a case.

    python -m benchmarks.mcp_probe [--calls N] [--variants shipped,sse,stateless]

Starts ``lakewarden serve`` on a DuckDB file holding the ``mcp_query`` table, once per variant of
the MCP transport options (``shipped``: as the server ships; the others override the options
given to the MCP SDK's ``streamable_http_app``), each in a process of its own with
``time.perf_counter`` probes wrapped around the steps of a request (the MCP SDK's
streamable-HTTP entry, its request kernel, tool-argument validation and result conversion,
lakewarden's adapter, the statement, the whole ASGI call per path). This process drives them,
interleaved: per server one ``mcp.Client`` session (the ``mcp_query`` agent; it negotiates the
per-request 2026-07-28 protocol with this SDK), the same ``tools/call`` as a bare JSON-RPC POST
in a 2025-06-18 session (the initialize handshake most clients in the field still use),
``POST /v1/sql`` and ``GET /healthz``. Prints the client-side p50 of each call and each probe's
calls and median inclusive microseconds (probes nest: a step's time includes the steps inside
it). The probes cost about a microsecond each; compare steps and servers within one run.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import inspect
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import mcp_variant_server

STATS: dict[str, list[float]] = defaultdict(list)


def _probe(owner: Any, attr: str, label: str) -> None:
    """Replace ``owner.attr`` by a wrapper recording its inclusive wall time under ``label``."""
    fn = inspect.getattr_static(owner, attr)
    if isinstance(fn, staticmethod | classmethod):
        raise TypeError(f"{label}: static and class methods are not probed")
    samples = STATS[label]
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - start)

        setattr(owner, attr, timed_async)
    else:

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - start)

        setattr(owner, attr, timed)


def _install() -> None:
    """Every probe, before the server is built (some are bound at construction)."""
    import mcp_types.methods as methods
    from mcp.server import _streamable_http_modern as modern
    from mcp.server import runner, streamable_http, streamable_http_manager
    from mcp.server._otel import OpenTelemetryMiddleware
    from mcp.server.mcpserver import server as mcpserver
    from mcp.server.mcpserver.tools.base import Tool
    from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
    from mcp.server.request_state import RequestStateBoundary
    from mcp.shared import jsonrpc_dispatcher
    from starlette.types import ASGIApp, Receive, Scope, Send

    import lakewarden.intake.mcp as lw_mcp
    import lakewarden.intake.rest as lw_rest
    import lakewarden.intake.server as lw_server

    manager = streamable_http_manager.StreamableHTTPSessionManager
    transport = streamable_http.StreamableHTTPServerTransport
    dispatcher = jsonrpc_dispatcher.JSONRPCDispatcher
    for owner, attr, label in [
        (manager, "_handle_request", "sdk: session manager (whole MCP request)"),
        (manager, "_handle_stateful_request", "sdk:   stateful (2025) path"),
        (manager, "_handle_stateless_request", "sdk:   stateless (2025) path"),
        (transport, "_handle_post_request", "sdk:     2025 transport: POST"),
        (dispatcher, "_handle_request", "sdk:     2025 dispatcher: request"),
        (streamable_http_manager, "handle_modern_request", "sdk:   modern (2026) path"),
        (modern, "check_accept_headers", "sdk:     accept headers"),
        (modern, "classify_inbound_request", "sdk:     classify envelope"),
        (modern, "_mcp_param_rejection", "sdk:     Mcp-Param header check"),
        (modern, "serve_one", "sdk:     serve_one"),
        (runner.ServerRunner, "_make_context", "sdk:       make context"),
        (runner, "_extract_meta", "sdk:       extract _meta"),
        (methods, "validate_client_request", "sdk:       validate request (surface)"),
        (OpenTelemetryMiddleware, "__call__", "sdk:       otel middleware (incl. inner)"),
        (RequestStateBoundary, "__call__", "sdk:       request-state mw (incl. inner)"),
        (mcpserver.MCPServer, "_handle_call_tool", "sdk:       tools/call handler"),
        (FuncMetadata, "validate_arguments", "sdk:         validate tool arguments"),
        (Tool, "run", "sdk:         Tool.run"),
        (FuncMetadata, "call_fn", "sdk:           tool function"),
        (FuncMetadata, "convert_result", "sdk:         convert result"),
        (runner.ServerRunner, "_serialize", "sdk:       serialize result (sieve)"),
        (methods, "serialize_server_result", "sdk:         serialize_server_result"),
        (runner, "aclose_shielded", "sdk:       close connection"),
        (modern, "_to_jsonrpc_response", "sdk:     to JSON-RPC response"),
        (modern, "_write", "sdk:     write JSON response"),
        (lw_mcp, "attend", "lw mcp: attend (identify, hand-off, work)"),
        (lw_mcp, "run_statement", "lw mcp:   run_statement (worker)"),
        (lw_mcp, "_ok", "lw mcp:   render result (worker)"),
        (lw_mcp, "_traceparent", "lw mcp: traceparent"),
        (lw_rest, "attend", "lw rest: attend (identify, hand-off, work)"),
        (lw_rest, "run_statement", "lw rest:   run_statement (worker)"),
    ]:
        if hasattr(owner, attr):
            _probe(owner, attr, label)

    wrap_body = lw_server.bounded_body

    def timed_app(app: ASGIApp, *args: Any) -> ASGIApp:
        inner = wrap_body(app, *args)

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            path = scope["path"]
            label = "asgi: /mcp" if path.startswith("/mcp") else f"asgi: {path}"
            start = time.perf_counter()
            try:
                await inner(scope, receive, send)
            finally:
                STATS[label].append(time.perf_counter() - start)

        return asgi

    lw_server.bounded_body = timed_app  # type: ignore[assignment]


# Transport options given to the MCP SDK over the shipped ones ("shipped" changes nothing),
# the same variants as benchmarks.mcp_variant_server's.
VARIANTS: dict[str, dict[str, bool]] = {"shipped": {}, **mcp_variant_server.VARIANTS}


def serve(out: Path, variant: str, argv: list[str]) -> None:
    """The server side: probes, then ``lakewarden serve``; the samples go to ``out`` at exit."""
    from mcp.server import MCPServer

    _install()
    options = VARIANTS[variant]
    shipped = MCPServer.streamable_http_app

    def with_options(self: MCPServer, **kwargs: Any) -> Any:
        return shipped(self, **{**kwargs, **options})

    MCPServer.streamable_http_app = with_options  # type: ignore[method-assign]
    atexit.register(lambda: out.write_text(json.dumps(STATS)))
    from lakewarden.intake.cli import main as cli

    sys.argv = ["lakewarden", "serve", *argv]
    cli()


# -- the agent side --------------------------------------------------------------------------


def drive(calls: int, variants: list[str]) -> None:
    from contextlib import ExitStack

    from anyio.from_thread import start_blocking_portal

    from benchmarks import bench_mcp, common

    header = {"X-Lakewarden-Agent": common.BENCH_AGENT}
    query = {"sql": bench_mcp.QUERY}
    with tempfile.TemporaryDirectory(prefix="lakewarden-mcp-probe-") as tmp:
        root = Path(tmp)
        _, file = bench_mcp._build(root)
        specs = []
        for variant in variants:
            copy = bench_mcp._copy(file, root / variant)
            spec = bench_mcp.lakewarden_spec(variant, ["--duckdb", str(copy)])
            argv = [sys.executable, "-m", "benchmarks.mcp_probe", "serve"]
            argv += [str(root / f"{variant}.json"), variant, *spec.argv[4:]]
            specs.append(bench_mcp.Spec(variant, argv, spec.url, spec.ready))
        fns: dict[str, Callable[[], object]] = {}
        with ExitStack() as stack:
            urls = stack.enter_context(bench_mcp.servers(specs, root))
            portal = stack.enter_context(start_blocking_portal())
            agent = bench_mcp.Agent(portal, stack)
            for variant, url in urls.items():
                client = agent.mcp(url + "/mcp/", header)
                print(f"{variant}: mcp.Client negotiated {client.protocol_version}")
                bare = agent.raw(url)
                bare.http.headers.update(header)
                rest = agent.rest(url)
                rest.headers.update(header)
                fns |= {
                    f"{variant} mcp.Client query": agent.timed(
                        functools.partial(client.call_tool, "query", query),
                        bench_mcp._lakewarden_rows,
                    ),
                    f"{variant} bare 2025 tools/call": agent.timed(
                        functools.partial(
                            bare.request, "tools/call", {"name": "query", "arguments": query}
                        ),
                        bench_mcp._raw_rows,
                    ),
                    f"{variant} rest /v1/sql": agent.timed(
                        functools.partial(rest.post, "/v1/sql", json=query), bench_mcp._rest_rows
                    ),
                    f"{variant} rest /healthz": agent.timed(
                        functools.partial(rest.get, "/healthz"), lambda _: None
                    ),
                }
            times = common.measure(fns, repeats=calls, warmup=20, self_timed=frozenset(fns))
        samples = {v: json.loads((root / f"{v}.json").read_text()) for v in variants}
    print(f"\n{'client p50 us':<44} {'calls':>6} {'p50':>9}")
    for name, values in times.items():
        print(f"{name:<44} {len(values):>6} {common.percentile(values, 50) * 1e6:>9.1f}")
    labels = list(dict.fromkeys(label for v in variants for label in samples[v]))
    print(f"\n{'server probe, median us (inclusive)':<52}" + "".join(f"{v:>16}" for v in variants))
    for label in labels:
        cells = []
        for v in variants:
            values = samples[v].get(label) or []
            cells.append(
                f"{statistics.median(values) * 1e6:>9.1f} x{len(values):<5}"
                if values
                else f"{'-':>16}"
            )
        if any(c.strip() != "-" for c in cells):
            print(f"{label:<52}" + "".join(cells))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        serve(Path(args[1]), args[2], args[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--variants", default="shipped")
    parsed = parser.parse_args(args)
    variants = parsed.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
    drive(parsed.calls, variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
