"""Tracer and meter providers, configured by the standard ``OTEL_*`` environment variables.

- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource (default name ``lakewarden``).
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the ``_TRACES_``/``_METRICS_`` variants): turns OTLP push on;
  ``OTEL_EXPORTER_OTLP_PROTOCOL`` picks ``grpc`` (default) or ``http/protobuf``.
- ``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_BSP_SCHEDULE_DELAY``: read by the SDK itself.
- ``OTEL_SDK_DISABLED=true``: the SDK is off for every signal, as the specification says: no
  spans, no OTLP push, and ``/metrics`` serves no lakewarden metrics either.

Metrics are one set of OTel instruments read by two readers: the Prometheus reader (pull) and,
when an endpoint is set, a periodic OTLP reader (push).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from prometheus_client import CollectorRegistry, generate_latest

from lakewarden import __version__
from lakewarden.errors import ConfigurationError
from lakewarden.telemetry.export import (
    SIGNALS,
    CountedMetricExporter,
    CountedSpanExporter,
    Losses,
    count_queue_drops,
)
from lakewarden.telemetry.instruments import Instruments
from lakewarden.telemetry.recorder import PresetIds, Recorder

log = logging.getLogger(__name__)

SCOPE = "lakewarden"
# Semantic-conventions buckets for db.client.operation.duration (seconds).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)
# Signal computation is usually sub-millisecond; the default OTel buckets start at 5 (seconds).
SIGNAL_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)
PROTOCOLS = ("grpc", "http/protobuf")
# The longest a flush or a shutdown waits for a collector. The SDK's own flush has no time
# limit (it exports batch after batch, each up to OTEL_EXPORTER_OTLP_TIMEOUT), so a stalled
# collector would otherwise hold a SIGTERM past the pod's grace period.
FLUSH_LIMIT_S = 5.0


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def _protocol(env: Mapping[str, str], signal: str) -> str:
    raw = env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    value = raw.strip().lower()
    if value not in PROTOCOLS:
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={raw!r} is not supported: use grpc or http/protobuf"
        )
    return value


def _endpoint(env: Mapping[str, str], signal: str) -> str:
    return env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ""
    )


def _bounded(work: Callable[[], object], timeout_s: float, what: str) -> None:
    """Run ``work`` for at most ``timeout_s``; past that it is left to finish in the background."""

    def guarded() -> None:
        try:
            work()
        except Exception as exc:  # telemetry must never break the caller
            # Expected when the collector is down or stalled (the losses were counted and
            # logged already): one line, not a traceback.
            log.warning("telemetry %s failed: %s", what, str(exc).replace("\n", " ")[:300])

    thread = threading.Thread(target=guarded, name=f"lakewarden-telemetry-{what}", daemon=True)
    thread.start()
    thread.join(max(timeout_s, 0.0))
    if thread.is_alive():
        log.warning(
            "telemetry %s did not finish within %.0f s (is the OTLP collector stalled?); "
            "what it had not sent is lost",
            what,
            timeout_s,
        )


def _otlp_span_exporter(protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


def _otlp_metric_reader(protocol: str, losses: Losses) -> MetricReader:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
    return PeriodicExportingMetricReader(CountedMetricExporter(OTLPMetricExporter(), losses))


class Telemetry:
    """Owns the providers of one warden; nothing here is global, so two lakes never mix."""

    def __init__(
        self,
        *,
        span_exporters: Sequence[SpanExporter] = (),
        metric_readers: Sequence[MetricReader] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.disabled = _flag(env, "OTEL_SDK_DISABLED")
        attrs = {"service.version": __version__}
        if not env.get("OTEL_SERVICE_NAME"):
            attrs["service.name"] = "lakewarden"
        self.resource = Resource.create(attrs)
        processors: list[SpanProcessor] = [SimpleSpanProcessor(e) for e in span_exporters]
        readers: list[MetricReader] = list(metric_readers)
        self.losses = {
            "spans": Losses("spans", "the OTLP endpoint " + _endpoint(env, "TRACES")),
            "metrics": Losses("metrics", "the OTLP endpoint " + _endpoint(env, "METRICS")),
        }
        if not self.disabled:
            if _endpoint(env, "TRACES"):
                exporter = _otlp_span_exporter(_protocol(env, "TRACES"))
                processors.append(
                    count_queue_drops(
                        BatchSpanProcessor(CountedSpanExporter(exporter, self.losses["spans"])),
                        self.losses["spans"],
                    )
                )
            if _endpoint(env, "METRICS"):
                readers.append(
                    _otlp_metric_reader(_protocol(env, "METRICS"), self.losses["metrics"])
                )
        self.registry = CollectorRegistry()
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader(registry=self.registry))
        self.ids = PresetIds()
        self.tracer_provider = TracerProvider(resource=self.resource, id_generator=self.ids)
        for processor in processors:
            self.tracer_provider.add_span_processor(processor)
        self.meter_provider = MeterProvider(
            resource=self.resource,
            metric_readers=readers,
            views=[
                View(
                    instrument_name="db.client.operation.duration",
                    aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS),
                ),
                View(
                    instrument_name="lakewarden.signal.duration",
                    aggregation=ExplicitBucketHistogramAggregation(SIGNAL_BUCKETS),
                ),
            ],
        )
        self.tracer: trace.Tracer = (
            trace.NoOpTracer()
            if self.disabled
            else self.tracer_provider.get_tracer(SCOPE, __version__)
        )
        self.meter = self.meter_provider.get_meter(SCOPE, __version__)
        dropped = self.meter.create_counter(
            "lakewarden.telemetry.dropped",
            unit="{item}",
            description="Spans and metric points lost on their way out (collector down, "
            "refusing or too slow; queues full).",
        )
        for signal in SIGNALS:
            self.losses[signal].counter = dropped
            dropped.add(0, {"lakewarden.signal": signal})  # the series exists before a loss
        self._dropped = dropped
        self._recorders: list[Recorder] = []

    def recorder(self, instruments: Instruments) -> Recorder:
        """The background recorder of statement spans and metric points."""
        overflow = {
            signal: Losses(signal, "the statement telemetry queue", self._dropped)
            for signal in SIGNALS
        }
        recorder = Recorder(self.tracer, self.ids, instruments, overflow, enabled=not self.disabled)
        self._recorders.append(recorder)
        return recorder

    def prometheus_text(self) -> bytes:
        """The Prometheus exposition of every instrument (what ``/metrics`` serves)."""
        for recorder in self._recorders:
            recorder.flush(timeout_s=2.0)
        return generate_latest(self.registry)

    def flush(self, timeout_s: float = FLUSH_LIMIT_S) -> None:
        """Send what is pending; never waits longer than ``timeout_s`` for a collector."""
        deadline = time.monotonic() + timeout_s
        for recorder in self._recorders:
            recorder.flush(timeout_s)
        millis = int(timeout_s * 1000)

        def flush_all() -> None:
            self.tracer_provider.force_flush(millis)
            self.meter_provider.force_flush(millis)

        _bounded(flush_all, deadline - time.monotonic(), "flush")

    def shutdown(self, timeout_s: float = FLUSH_LIMIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for recorder in self._recorders:
            recorder.close()
        self.flush(timeout_s)

        def stop_all() -> None:
            millis = max(int((deadline - time.monotonic()) * 1000), 100)
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown(millis)

        _bounded(stop_all, deadline - time.monotonic() + 1.0, "shutdown")
