"""The OTLP receiver must decode what the OTel SDK's own exporters send, over both protocols.

Only upstream OTel code talks to the receiver here, so a failure points at the receiver itself.
"""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otlp_receiver import OTLPReceiver

PROTOCOLS = ["grpc", "http/protobuf"]
RESOURCE = Resource.create({"service.name": "otlp-receiver-test"})
# Short timeouts so a broken receiver fails the test quickly instead of retrying for seconds.
EXPORT_TIMEOUT_S = 3
FLUSH_TIMEOUT_MS = 5_000
# urllib must not route loopback requests through a proxy configured in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _received_protocol(protocol: str) -> str:
    return "grpc" if protocol == "grpc" else "http"


def _span_exporter(protocol: str, receiver: OTLPReceiver) -> SpanExporter:
    # Traces go compressed so the gzip paths of both servers are exercised too.
    if protocol == "grpc":
        return GrpcSpanExporter(
            endpoint=receiver.grpc_endpoint,
            insecure=True,
            timeout=EXPORT_TIMEOUT_S,
            compression=grpc.Compression.Gzip,
        )
    return HttpSpanExporter(
        endpoint=receiver.http_endpoint + "/v1/traces",
        timeout=EXPORT_TIMEOUT_S,
        compression=HttpCompression.Gzip,
    )


def _metric_exporter(protocol: str, receiver: OTLPReceiver) -> MetricExporter:
    if protocol == "grpc":
        return GrpcMetricExporter(
            endpoint=receiver.grpc_endpoint, insecure=True, timeout=EXPORT_TIMEOUT_S
        )
    return HttpMetricExporter(
        endpoint=receiver.http_endpoint + "/v1/metrics", timeout=EXPORT_TIMEOUT_S
    )


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/x-protobuf", **(headers or {})},
    )
    try:
        with _DIRECT.open(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _trace_request(span_name: str) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.name = span_name
    span.trace_id = bytes(range(1, 17))
    span.span_id = bytes(range(1, 9))
    return request


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_spans_arrive_with_linkage_attributes_and_resource(protocol: str) -> None:
    with OTLPReceiver() as receiver:
        provider = TracerProvider(resource=RESOURCE)
        provider.add_span_processor(BatchSpanProcessor(_span_exporter(protocol, receiver)))
        tracer = provider.get_tracer("receiver-test")
        with (
            tracer.start_as_current_span(
                "parent", kind=SpanKind.SERVER, attributes={"rows": 3, "cached": False}
            ) as parent,
            tracer.start_as_current_span(
                "child", attributes={"sql": "select 1", "ratio": 0.5, "tables": ["a", "b"]}
            ) as child,
        ):
            child.add_event("policy.checked", {"rule": "no_delete", "hits": 2})
            child.set_status(Status(StatusCode.ERROR, "denied"))
        assert provider.force_flush(FLUSH_TIMEOUT_MS)
        provider.shutdown()

        receiver.wait_for(lambda r: len(r.spans()) >= 2)
        spans = {s["name"]: s for s in receiver.spans()}
        assert sorted(spans) == ["child", "parent"]
        got_parent, got_child = spans["parent"], spans["child"]

        parent_ctx, child_ctx = parent.get_span_context(), child.get_span_context()
        assert got_parent["trace_id"] == format(parent_ctx.trace_id, "032x")
        assert got_child["trace_id"] == got_parent["trace_id"]
        assert got_parent["span_id"] == format(parent_ctx.span_id, "016x")
        assert got_child["span_id"] == format(child_ctx.span_id, "016x")
        assert got_child["parent_span_id"] == got_parent["span_id"]
        assert got_parent["parent_span_id"] == ""

        assert got_parent["kind"] == trace_pb2.Span.SPAN_KIND_SERVER
        assert got_child["kind"] == trace_pb2.Span.SPAN_KIND_INTERNAL
        assert got_child["status_code"] == trace_pb2.Status.STATUS_CODE_ERROR
        assert got_parent["status_code"] == trace_pb2.Status.STATUS_CODE_UNSET

        assert got_parent["attributes"] == {"rows": 3, "cached": False}
        assert got_child["attributes"] == {"sql": "select 1", "ratio": 0.5, "tables": ["a", "b"]}
        assert got_child["events"] == [
            {"name": "policy.checked", "attributes": {"rule": "no_delete", "hits": 2}}
        ]
        assert got_parent["events"] == []

        for span in (got_parent, got_child):
            assert span["resource"]["service.name"] == "otlp-receiver-test"
            assert span["scope"] == "receiver-test"
            assert span["protocol"] == _received_protocol(protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metrics_arrive_with_kinds_values_and_attributes(protocol: str) -> None:
    def observe_queue(options: CallbackOptions) -> list[Observation]:
        return [Observation(7, {"pool": "main"})]

    with OTLPReceiver() as receiver:
        # A long interval keeps exports to the explicit flush, so the test is deterministic.
        reader = PeriodicExportingMetricReader(
            _metric_exporter(protocol, receiver), export_interval_millis=60_000
        )
        provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
        meter = provider.get_meter("receiver-test")
        statements = meter.create_counter("test.statements", unit="{statement}")
        statements.add(2, {"verdict": "allow"})
        statements.add(1, {"verdict": "deny"})
        statements.add(3, {"verdict": "allow"})
        duration = meter.create_histogram(
            "test.duration", unit="ms", explicit_bucket_boundaries_advisory=[10.0, 20.0]
        )
        for value in (5, 15, 25):
            duration.record(value, {"op": "select"})
        meter.create_observable_gauge("test.queue", callbacks=[observe_queue], unit="1")
        assert provider.force_flush(FLUSH_TIMEOUT_MS)

        names = {"test.statements", "test.duration", "test.queue"}
        receiver.wait_for(lambda r: names <= {m["name"] for m in r.metrics()})
        provider.shutdown()
        # Cumulative exports repeat every metric; the latest export is the one to check.
        metrics = {m["name"]: m for m in receiver.metrics()}

        counter = metrics["test.statements"]
        assert (counter["kind"], counter["unit"]) == ("sum", "{statement}")
        by_verdict = {p["attributes"]["verdict"]: p["value"] for p in counter["points"]}
        assert by_verdict == {"allow": 5, "deny": 1}

        histogram = metrics["test.duration"]
        assert (histogram["kind"], histogram["unit"]) == ("histogram", "ms")
        [point] = histogram["points"]
        assert point["attributes"] == {"op": "select"}
        assert point["value"] == 3
        assert point["sum"] == 45
        assert point["bucket_counts"] == [1, 1, 1]

        gauge = metrics["test.queue"]
        assert gauge["kind"] == "gauge"
        assert [(p["attributes"], p["value"]) for p in gauge["points"]] == [({"pool": "main"}, 7)]

        for metric in metrics.values():
            assert metric["resource"]["service.name"] == "otlp-receiver-test"
            assert metric["protocol"] == _received_protocol(protocol)


def test_malformed_http_bodies_get_400_and_server_keeps_serving() -> None:
    with OTLPReceiver() as receiver:
        traces_url = receiver.http_endpoint + "/v1/traces"
        assert _post(traces_url, b"not a protobuf") == 400
        assert _post(receiver.http_endpoint + "/v1/metrics", b"\xff\xff\xff") == 400
        assert _post(traces_url, b"not gzip", {"Content-Encoding": "gzip"}) == 400
        assert _post(traces_url, b"", {"Content-Type": "application/json"}) == 415
        assert _post(receiver.http_endpoint + "/v1/logs", b"") == 404
        assert len(receiver.rejected()) == 3

        assert _post(traces_url, _trace_request("after-garbage").SerializeToString()) == 200
        assert [s["name"] for s in receiver.spans()] == ["after-garbage"]


def test_concurrent_exports_over_both_protocols_are_all_recorded() -> None:
    with OTLPReceiver() as receiver:
        channel = grpc.insecure_channel(receiver.grpc_endpoint.removeprefix("http://"))
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)

        def export(i: int) -> Any:
            request = _trace_request(f"span-{i}")
            if i % 2:
                return stub.Export(request, timeout=5)
            body = gzip.compress(request.SerializeToString())
            return _post(receiver.http_endpoint + "/v1/traces", body, {"Content-Encoding": "gzip"})

        with channel, ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(export, range(32)))

        assert results[0::2] == [200] * 16
        assert all(
            isinstance(r, trace_service_pb2.ExportTraceServiceResponse) for r in results[1::2]
        )
        assert sorted(s["name"] for s in receiver.spans()) == sorted(f"span-{i}" for i in range(32))
        assert {s["protocol"] for s in receiver.spans()} == {"grpc", "http"}


def test_wait_for_timeout_reports_what_was_received() -> None:
    with OTLPReceiver() as receiver:
        body = _trace_request("only-span").SerializeToString()
        assert _post(receiver.http_endpoint + "/v1/traces", body) == 200
        with pytest.raises(AssertionError, match=r"only-span \(http\)"):
            receiver.wait_for(lambda r: len(r.spans()) > 1, timeout=0.1)

        receiver.clear()
        assert receiver.spans() == []
        assert receiver.metrics() == []
