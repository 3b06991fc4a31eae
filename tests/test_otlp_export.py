"""Spans and metrics reach a real OTLP receiver, configured only by the standard OTEL_* vars."""

from __future__ import annotations

from pathlib import Path

import pytest

import lakewarden

from otlp_receiver import OTLPReceiver


@pytest.fixture
def receiver() -> OTLPReceiver:
    with OTLPReceiver() as r:
        yield r  # type: ignore[misc]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_statement_spans_and_metrics_are_exported(
    receiver: OTLPReceiver, lake_dir: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders-sidecar")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    warden = lakewarden.open(lake_dir)
    with warden.session("etl-agent") as s:
        s.sql("CREATE TABLE orders (id INT, email VARCHAR)")
        written = s.sql("INSERT INTO orders VALUES (1, NULL), (2, 'b')")
    warden.telemetry.flush()

    receiver.wait_for(lambda r: any(sp["name"] == "INSERT orders" for sp in r.spans()))
    span = next(sp for sp in receiver.spans() if sp["name"] == "INSERT orders")
    assert span["protocol"] == ("grpc" if protocol == "grpc" else "http")
    assert span["trace_id"] == written.trace_id
    assert span["attributes"]["gen_ai.agent.name"] == "etl-agent"
    assert span["attributes"]["lakewarden.snapshot.id"] == written.snapshot_id
    assert span["resource"]["service.name"] == "orders-sidecar"
    assert span["resource"]["deployment.environment.name"] == "test"

    def latest(name: str) -> dict | None:
        found = [m for m in receiver.metrics() if m["name"] == name]
        return found[-1] if found else None

    receiver.wait_for(lambda r: latest("lakewarden.column.null_ratio") is not None)
    ratios = latest("lakewarden.column.null_ratio")
    assert ratios is not None
    by_column = {p["attributes"]["lakewarden.column.name"]: p["value"] for p in ratios["points"]}
    assert by_column == {"id": 0.0, "email": 0.5}
    rows = latest("lakewarden.rows.written")
    assert rows is not None and rows["kind"] == "sum"
    assert sum(p["value"] for p in rows["points"]) == 2
    duration = latest("db.client.operation.duration")
    assert duration is not None and duration["kind"] == "histogram"
    warden.close()


def test_sdk_disabled_exports_nothing_and_queries_still_work(
    receiver: OTLPReceiver, lake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with lakewarden.open(lake_dir) as warden, warden.session("a") as s:
        assert s.sql("SELECT 1").rows == [(1,)]
        warden.telemetry.flush()
    assert receiver.spans() == [] and receiver.metrics() == []


def test_unreachable_collector_never_breaks_a_query(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    with lakewarden.open(lake_dir) as warden, warden.session("a") as s:
        s.sql("CREATE TABLE t (a INT)")
        assert s.sql("INSERT INTO t VALUES (1)").rows_affected == 1


def test_bad_protocol_fails_at_start_up(lake_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(lakewarden.ConfigurationError, match="carrier-pigeon"):
        lakewarden.open(lake_dir)
