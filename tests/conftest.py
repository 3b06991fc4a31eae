"""Shared fixtures: a real DuckLake lake in a temp folder, spans captured in memory, and (for
lakes with a PostgreSQL catalog) one real PostgreSQL cluster and one S3 server per test run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks.services import S3, Postgres, postgres_server, s3_server
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

import lakewarden
from lakewarden.telemetry.recorder import flush_all


class SyncedSpans(InMemorySpanExporter):
    """Spans are recorded in the background: reading them first waits for the recorders."""

    def get_finished_spans(self):  # type: ignore[no-untyped-def]
        flush_all()
        return super().get_finished_spans()

    def clear(self) -> None:
        flush_all()
        super().clear()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return SyncedSpans()


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def warden(lake_dir: Path, spans: InMemorySpanExporter) -> Iterator[lakewarden.Warden]:
    w = lakewarden.open(lake_dir, telemetry=lakewarden.Telemetry(span_exporters=[spans], env={}))
    yield w
    w.close()


def samples(warden: lakewarden.Warden, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Prometheus samples of one metric: label set (without otel_scope_*) -> value."""
    text = warden.telemetry.prometheus_text().decode()
    out: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                labels = {k: v for k, v in sample.labels.items() if not k.startswith("otel_")}
                out[frozenset(labels.items())] = sample.value
    return out


def sample(warden: lakewarden.Warden, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for k, v in samples(warden, name).items() if set(labels.items()) <= set(k)]
    assert len(found) == 1, f"{name}{labels}: {len(found)} matching samples"
    return found[0]


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    """A PostgreSQL cluster on a free port for the run; each test makes its own database."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """An S3-compatible server (moto's) for the run; each test makes its own bucket."""
    with s3_server() as server:
        yield server
