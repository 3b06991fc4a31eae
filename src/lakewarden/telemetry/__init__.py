"""The only stage that touches the OpenTelemetry SDK: spans, metric instruments, exporters."""

from lakewarden.telemetry.provider import Telemetry

__all__ = ["Telemetry"]
