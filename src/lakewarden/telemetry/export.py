"""OTLP export that counts what it loses and says so once per outage.

When the collector is down, refusing or stalled, the SDK's exporters retry inside their time
limit and then give the batch up; the batch processor drops spans once its bounded queue is
full. Neither slows an agent (both run on the SDK's own threads), but both lose telemetry, and
the SDK logs every failed batch and every full queue. Here each loss is counted in
``lakewarden_telemetry_dropped_total{lakewarden_signal}`` (``spans``, ``metrics``), the start of
an outage is logged once with the exporter's own reason, and its end once with what was lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.metrics import Counter
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

__all__ = [
    "SIGNALS",
    "CountedMetricExporter",
    "CountedSpanExporter",
    "Losses",
    "count_queue_drops",
]

log = logging.getLogger(__name__)

SIGNALS = ("spans", "metrics")

# The SDK's loggers that speak once per failed batch or full queue; their records are kept as
# the reason of the outage instead of reaching the log.
_NOISY_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
)


class _Reasons(logging.Filter):
    """Keeps the last warning or error of the SDK's exporters and stops it there."""

    def __init__(self) -> None:
        super().__init__()
        self.last = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.last = record.getMessage()[:500]
        return False


_REASONS = _Reasons()
_installed = threading.Lock()


def _quiet_sdk_loggers() -> None:
    with _installed:
        for name in _NOISY_LOGGERS:
            logger = logging.getLogger(name)
            if _REASONS not in logger.filters:
                logger.addFilter(_REASONS)


class Losses:
    """What one signal lost on its way to one destination: counted in
    ``lakewarden_telemetry_dropped_total``, and logged once per outage."""

    def __init__(self, signal: str, destination: str, counter: Counter | None = None) -> None:
        self.signal = signal
        self.destination = destination
        self.total = 0
        self.counter = counter  # None until the meter exists
        self._lock = threading.Lock()
        self._outage_lost = 0
        self._outage_since: float | None = None
        _quiet_sdk_loggers()

    @property
    def in_outage(self) -> bool:
        return self._outage_since is not None

    def lost(self, items: int, why: str = "") -> None:
        if items <= 0:
            return
        with self._lock:
            self.total += items
            self._outage_lost += items
            starting = self._outage_since is None
            if starting:
                self._outage_since = time.monotonic()
        if self.counter is not None:
            self.counter.add(items, {"lakewarden.signal": self.signal})
        if starting:
            log.warning(
                "telemetry %s are being dropped on their way to %s (%s); they are counted in "
                'lakewarden_telemetry_dropped_total{lakewarden_signal="%s"} until it recovers. '
                "Agents' statements are not affected.",
                self.signal,
                self.destination,
                why or _REASONS.last or "no reason given",
                self.signal,
            )

    def delivered(self) -> None:
        """The destination took a batch again: the outage, if any, is over."""
        if self._outage_since is None:
            return
        with self._lock:
            if self._outage_since is None:
                return
            lasted = time.monotonic() - self._outage_since
            lost, self._outage_lost, self._outage_since = self._outage_lost, 0, None
        log.warning(
            "telemetry %s reach %s again after %.0f s; %d were dropped meanwhile",
            self.signal,
            self.destination,
            lasted,
            lost,
        )


class CountedSpanExporter(SpanExporter):
    """An OTLP span exporter whose failed batches are counted as lost spans."""

    def __init__(self, inner: SpanExporter, losses: Losses) -> None:
        self._inner = inner
        self._losses = losses

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result: SpanExportResult = _export(
            self._inner.export, spans, len(spans), self._losses, SpanExportResult.FAILURE
        )
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _points(data: MetricsData) -> int:
    return sum(
        len(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    )


class CountedMetricExporter(MetricExporter):
    """An OTLP metric exporter whose failed exports are counted as lost points."""

    def __init__(self, inner: MetricExporter, losses: Losses) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._losses = losses

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        def send(data: MetricsData) -> MetricExportResult:
            return self._inner.export(data, timeout_millis=timeout_millis, **kwargs)

        result: MetricExportResult = _export(
            send, metrics_data, _points(metrics_data), self._losses, MetricExportResult.FAILURE
        )
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _export(
    send: Callable[[Any], Any], batch: Any, items: int, losses: Losses, failure: Any
) -> Any:
    try:
        result = send(batch)
    except Exception as exc:  # an exporter bug must cost telemetry, not the export thread
        losses.lost(items, f"{type(exc).__name__}: {exc}")
        return failure
    if result.name == "SUCCESS":
        losses.delivered()
    else:
        losses.lost(items)
    return result


class _QueueDrops:
    """The batch processor's own count of dropped spans (queue full, or after shutdown),
    forwarded to :class:`Losses`; the SDK has no other hook for it."""

    def __init__(self, losses: Losses) -> None:
        self._losses = losses

    def register_queue_size(self, get_queue_size: Callable[[], int]) -> None:
        pass

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        self._losses.lost(count, f"the export queue is full ({error_type})")

    def finish_items(self, count: int) -> None:
        pass


def count_queue_drops(processor: BatchSpanProcessor, losses: Losses) -> BatchSpanProcessor:
    """``processor`` with the spans its full queue drops counted as lost.

    The batch processor reports drops only to its ``ProcessorMetrics`` (opentelemetry-sdk
    pinned in pyproject.toml; tests/test_telemetry_faults.py fails if that hook moves).
    """
    processor._batch_processor._metrics = _QueueDrops(losses)
    return processor
