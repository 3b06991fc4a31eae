"""A real OTLP receiver (gRPC and HTTP/protobuf) on loopback, for tests.

Tests point the OTel SDK's own OTLP exporters at it, so a passing test proves that spans and
metrics really crossed the wire, not that some in-memory exporter saw them.

    with OTLPReceiver() as receiver:
        ...  # export to receiver.grpc_endpoint or receiver.http_endpoint + "/v1/traces"
        receiver.wait_for(lambda r: any(s["name"] == "query" for s in r.spans()))

Faults for tests of a collector in trouble: ``receiver.behaviour = "refuse"`` answers every export
with an error (HTTP 503, gRPC UNAVAILABLE), ``"stall"`` holds each export ``stall_s`` seconds
before answering, ``"accept"`` is the default. Fixed ports let a test start the receiver where
an exporter already points, to show that export resumes.
"""

from __future__ import annotations

import copy
import gzip
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

_HOST = "127.0.0.1"


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    # An unset AnyValue is OTLP's null.
    return None if kind is None else getattr(value, kind)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in pairs}


def _decode_spans(
    request: trace_service_pb2.ExportTraceServiceRequest, protocol: str
) -> list[dict[str, Any]]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "kind": span.kind,
                        "status_code": span.status.code,
                        "attributes": _attributes(span.attributes),
                        "events": [
                            {"name": e.name, "attributes": _attributes(e.attributes)}
                            for e in span.events
                        ],
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                        "protocol": protocol,
                    }
                )
    return spans


def _points(metric: Metric, kind: str) -> list[dict[str, Any]]:
    points = []
    for point in getattr(metric, kind).data_points:
        entry: dict[str, Any] = {"attributes": _attributes(point.attributes)}
        if kind in ("sum", "gauge"):
            entry["value"] = getattr(point, point.WhichOneof("value") or "as_int")
        else:
            # Histogram-like points have no single value; the count is the most useful stand-in.
            entry["value"] = point.count
            entry["sum"] = point.sum
            if kind == "histogram":
                entry["bucket_counts"] = list(point.bucket_counts)
                entry["explicit_bounds"] = list(point.explicit_bounds)
        points.append(entry)
    return points


def _decode_metrics(
    request: metrics_service_pb2.ExportMetricsServiceRequest, protocol: str
) -> list[dict[str, Any]]:
    metrics = []
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data") or ""
                metrics.append(
                    {
                        "name": metric.name,
                        "unit": metric.unit,
                        "kind": kind,
                        "points": _points(metric, kind) if kind else [],
                        "resource": resource,
                        "scope": scope_metrics.scope.name,
                        "protocol": protocol,
                    }
                )
    return metrics


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if self._receiver._misbehave():
            context.abort(grpc.StatusCode.UNAVAILABLE, "refusing exports")
        self._receiver._ingest(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        if self._receiver._misbehave():
            context.abort(grpc.StatusCode.UNAVAILABLE, "refusing exports")
        self._receiver._ingest(request, "grpc")
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OTLPReceiver


# OTLP/HTTP path -> (request message, empty response message).
_HTTP_ROUTES: dict[str, tuple[type[Message], type[Message]]] = {
    "/v1/traces": (
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "/v1/metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
}


class _OTLPHandler(BaseHTTPRequestHandler):
    server: _HTTPServer
    # A client that announces more body than it sends must not pin a thread forever.
    timeout = 10

    def do_POST(self) -> None:
        route = _HTTP_ROUTES.get(self.path.split("?", 1)[0])
        if route is None:
            self.send_error(404)
            return
        request_type, response_type = route
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.send_error(400, "bad Content-Length")
            return
        # Read the body before any error reply so the client never sees a reset mid-upload.
        body = self.rfile.read(length)
        if self.headers.get_content_type() != "application/x-protobuf":
            self.send_error(415, "only application/x-protobuf is supported")
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            self.send_error(415, f"unsupported Content-Encoding {encoding!r}")
            return
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request = request_type()
            request.ParseFromString(body)
        except (OSError, EOFError, zlib.error, DecodeError) as exc:
            self.server.receiver._note_rejected(f"POST {self.path}: {exc}")
            self.send_error(400, f"malformed OTLP body: {exc}")
            return
        if self.server.receiver._misbehave():
            self.send_error(503, "refusing exports")
            return
        self.server.receiver._ingest(request, "http")
        payload = response_type().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # Per-request access logs would only clutter pytest output.
        pass


class OTLPReceiver:
    """In-process OTLP endpoint for both gRPC and HTTP/protobuf, bound to loopback only."""

    def __init__(self, grpc_port: int = 0, http_port: int = 0) -> None:
        self.behaviour = "accept"  # or "refuse", "stall"
        self.stall_s = 30.0
        self.attempts = 0  # export requests seen, answered or not
        self._lock = threading.Lock()
        self._spans: list[dict[str, Any]] = []
        self._metrics: list[dict[str, Any]] = []
        self._rejected: list[str] = []
        self._grpc_server: grpc.Server | None = None
        self._grpc_pool: futures.ThreadPoolExecutor | None = None
        self._http_server: _HTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc_port = grpc_port
        self._http_port = http_port

    @property
    def grpc_endpoint(self) -> str:
        self._require_started()
        return f"http://{_HOST}:{self._grpc_port}"

    @property
    def http_endpoint(self) -> str:
        self._require_started()
        return f"http://{_HOST}:{self._http_port}"

    def start(self) -> Self:
        if self._grpc_server is not None:
            raise RuntimeError("OTLPReceiver already started")
        try:
            self._start_servers()
        except BaseException:
            # Don't leak a half-started gRPC server if the HTTP side cannot bind.
            self.stop()
            raise
        return self

    def _start_servers(self) -> None:
        # grpc.Server.stop() leaves its executor's threads alive, so keep it to shut it down.
        self._grpc_pool = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="otlp-grpc")
        server = grpc.server(self._grpc_pool)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server
        )
        self._grpc_port = server.add_insecure_port(f"{_HOST}:{self._grpc_port}")
        server.start()
        self._grpc_server = server

        http_server = _HTTPServer((_HOST, self._http_port), _OTLPHandler)
        http_server.receiver = self
        self._http_port = http_server.server_address[1]
        # A short poll interval keeps stop() (and so every test using the receiver) fast.
        self._http_thread = threading.Thread(
            target=http_server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-receiver-http",
            daemon=True,
        )
        self._http_thread.start()
        # Only now may stop() call shutdown(), which would block forever without serve_forever.
        self._http_server = http_server

    def _misbehave(self) -> bool:
        """Count the attempt; True when it must be refused. A stall happens here."""
        with self._lock:
            self.attempts += 1
        if self.behaviour == "stall":
            time.sleep(self.stall_s)
        return self.behaviour == "refuse"

    def stop(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait(timeout=5)
            self._grpc_server = None
        if self._grpc_pool is not None:
            self._grpc_pool.shutdown(wait=True)
            self._grpc_pool = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far, in arrival order."""
        with self._lock:
            return copy.deepcopy(self._spans)

    def metrics(self) -> list[dict[str, Any]]:
        """One entry per metric per export, in arrival order (cumulative exports repeat names)."""
        with self._lock:
            return copy.deepcopy(self._metrics)

    def rejected(self) -> list[str]:
        """Why each malformed HTTP request was refused."""
        with self._lock:
            return list(self._rejected)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._metrics.clear()
            self._rejected.clear()

    def wait_for(
        self,
        predicate: Callable[[OTLPReceiver], bool],
        timeout: float = 10.0,
        interval: float = 0.02,
    ) -> None:
        """Poll until ``predicate(self)`` holds; exporters deliver asynchronously."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"OTLPReceiver: condition not met within {timeout}s; {self._summary()}"
                )
            time.sleep(interval)

    def _summary(self) -> str:
        with self._lock:
            spans = [f"{s['name']} ({s['protocol']})" for s in self._spans]
            metrics = sorted({f"{m['name']}:{m['kind']} ({m['protocol']})" for m in self._metrics})
            rejected = list(self._rejected)
        return (
            f"received spans {spans or 'none'}; metrics {metrics or 'none'}; "
            f"rejected requests {rejected or 'none'}"
        )

    def _require_started(self) -> None:
        if self._grpc_server is None:
            raise RuntimeError("OTLPReceiver is not running; call start() or use it as a context")

    def _ingest(self, request: Message, protocol: str) -> None:
        # Decode outside the lock; only the list append needs to be serialised.
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            spans = _decode_spans(request, protocol)
            with self._lock:
                self._spans.extend(spans)
        elif isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
            metrics = _decode_metrics(request, protocol)
            with self._lock:
                self._metrics.extend(metrics)
        else:
            raise TypeError(f"unexpected OTLP request {type(request).__name__}")

    def _note_rejected(self, reason: str) -> None:
        with self._lock:
            self._rejected.append(reason)


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on (yet): where an exporter meets a collector that is down."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((_HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
