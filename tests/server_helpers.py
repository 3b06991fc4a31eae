"""A real lakewarden server on a free loopback port, for the REST and MCP tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import lakewarden
from lakewarden.intake.server import ServerThread

from conftest import SyncedSpans


@dataclass
class Served:
    url: str
    warden: lakewarden.Warden
    spans: InMemorySpanExporter


@contextmanager
def serve(
    lake: Path,
    *,
    policy: Path | None = None,
    settings: lakewarden.Settings | None = None,
) -> Iterator[Served]:
    spans = SyncedSpans()
    warden = lakewarden.open(
        lake,
        policy=policy,
        settings=settings,
        telemetry=lakewarden.Telemetry(span_exporters=[spans], env={}),
    )
    server = ServerThread(warden, port=0)
    try:
        server.start()
        yield Served(server.url, warden, spans)
    finally:
        server.stop()
        warden.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_process(args: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen[str]:
    """``lakewarden serve ARGS`` in its own process, as users run it; ready when this returns."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakewarden.intake.cli", "serve", *args],
        env=env,
        text=True,
        **{"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, **popen},
    )
    port = args[args.index("--port") + 1] if "--port" in args else "7117"
    wait_ready(f"http://127.0.0.1:{port}", proc)
    return proc


def wait_ready(url: str, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    """Until ``url``/readyz answers 200; fail with the process's output if it exits first."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited {proc.returncode}: {proc.communicate()}")
            try:
                if http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"the server at {url} never became ready")
