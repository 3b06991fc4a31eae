"""A real lakewarden server on a free loopback port, for the REST and MCP tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
