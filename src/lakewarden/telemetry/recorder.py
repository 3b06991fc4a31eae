"""Statement telemetry, recorded off the agent's path.

A statement's span and metric points are built by one background thread from a plain
:class:`Event`, so an agent's read returns as soon as its rows are ready: the SDK's span and
instrument calls cost more than a small read. Ids are chosen up front, so the result, the commit
metadata and the audit record already carry the trace and span ids the span will have. The queue
is bounded: when telemetry cannot keep up, events are dropped and counted, never waited for.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lakewarden.errors import Violation
from lakewarden.telemetry.export import Losses
from lakewarden.telemetry.instruments import Instruments

log = logging.getLogger(__name__)
_PROPAGATOR = TraceContextTextMapPropagator()
QUEUE_SIZE = 10_000  # events waiting to be recorded; beyond this they are dropped and counted
DRAIN_INTERVAL_S = 0.05


def new_ids(parent: SpanContext | None) -> tuple[int, int]:
    """(trace id, span id) of a new span under ``parent`` (a new trace when there is none)."""
    trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
    return trace_id, random.getrandbits(64) or 1


def parent_of(traceparent: str | None) -> SpanContext | None:
    """The caller's span: a W3C ``traceparent``, else the current OTel span, else none."""
    if traceparent:
        ctx = trace.get_current_span(_PROPAGATOR.extract({"traceparent": traceparent}))
    else:
        ctx = trace.get_current_span()
    span_context = ctx.get_span_context()
    return span_context if span_context.is_valid else None


def child_of(trace_id: int, span_id: int) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1))


@dataclass
class Event:
    """Everything a statement's span and metric points need, as plain data."""

    name: str
    agent: str
    operation: str
    trace_id: int
    span_id: int
    parent: SpanContext | None
    start_ns: int
    end_ns: int = 0
    collection: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    decision: str = "allowed"
    error_type: str | None = None
    error_message: str | None = None
    violations: tuple[Violation, ...] = ()
    returned_rows: int | None = None
    rows_written: dict[str, int] | None = None  # table -> rows; None for reads
    snapshot_id: int | None = None
    dry_run: bool = False
    record_metrics: bool = True  # False for events that are not statements (check changes)

    @property
    def trace_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_hex(self) -> str:
        return f"{self.span_id:016x}"


class PresetIds(IdGenerator):
    """Hands the SDK the ids chosen when the statement started (random ones otherwise)."""

    def __init__(self) -> None:
        self._next = threading.local()

    def preset(self, trace_id: int, span_id: int) -> None:
        self._next.ids = (trace_id, span_id)

    def clear(self) -> None:
        self._next.ids = None

    def generate_span_id(self) -> int:
        ids = getattr(self._next, "ids", None)
        return ids[1] if ids else random.getrandbits(64)

    def generate_trace_id(self) -> int:
        ids = getattr(self._next, "ids", None)
        return ids[0] if ids else random.getrandbits(128)


_LIVE: weakref.WeakSet[Recorder] = weakref.WeakSet()


def flush_all(timeout_s: float = 10.0) -> None:
    """Wait until every live recorder has recorded what it was given (tests, shutdown)."""
    for recorder in list(_LIVE):
        recorder.flush(timeout_s)


class Recorder:
    def __init__(
        self,
        tracer: trace.Tracer,
        ids: PresetIds,
        instruments: Instruments,
        overflow: Mapping[str, Losses],
        enabled: bool,
    ) -> None:
        self._tracer = tracer
        self._ids = ids
        self._instruments = instruments
        self._overflow = overflow
        self.enabled = enabled
        # A deque and a periodic drain, not a queue that wakes the thread per statement: the
        # wake-up and the GIL hand-off would cost the agent more than the telemetry itself.
        self._pending: collections.deque[Event] = collections.deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lakewarden-telemetry", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    def submit(self, event: Event) -> None:
        if not self.enabled:
            return
        if len(self._pending) >= QUEUE_SIZE:
            # The statement's span and its metric points are both lost.
            why = f"{QUEUE_SIZE} statements are waiting to be recorded"
            self._overflow["spans"].lost(1, why)
            if event.record_metrics:
                self._overflow["metrics"].lost(1, why)
            return
        self._idle.clear()
        self._pending.append(event)

    def signal_time(self, signal: str, seconds: float) -> None:
        """Time spent computing one data-quality signal (a histogram point costs little)."""
        self._instruments.signal_duration.record(seconds, {"lakewarden.signal": signal})

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Record everything submitted so far, now; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._pending or not self._idle.is_set():
            self._wake.set()
            if time.monotonic() > deadline:
                return False
            self._idle.wait(0.01)
        return True

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(DRAIN_INTERVAL_S)
            self._wake.clear()
            while self._pending:
                event = self._pending.popleft()
                try:
                    self._span(event)
                    if event.record_metrics:
                        self._metrics(event)
                except Exception:  # telemetry must never take the sidecar down
                    log.exception("could not record telemetry for %s", event.name)
            for losses in self._overflow.values():
                losses.delivered()  # the queue is empty: an overflow, if any, is over
            self._idle.set()

    def _span(self, e: Event) -> None:
        context = trace.set_span_in_context(NonRecordingSpan(e.parent)) if e.parent else Context()
        self._ids.preset(e.trace_id, e.span_id)
        try:
            span = self._tracer.start_span(
                e.name,
                context=context,
                kind=SpanKind.CLIENT,
                attributes=e.attributes,
                start_time=e.start_ns,
            )
        finally:
            self._ids.clear()
        if e.decision:
            span.set_attribute("lakewarden.decision", e.decision)
        if e.returned_rows is not None:
            span.set_attribute("db.response.returned_rows", e.returned_rows)
        if e.rows_written is not None and not e.dry_run:
            span.set_attribute("lakewarden.rows.written", sum(e.rows_written.values()))
        if e.snapshot_id is not None:
            span.set_attribute("lakewarden.snapshot.id", e.snapshot_id)
        if e.dry_run:
            span.set_attribute("lakewarden.dry_run", True)
        for violation in e.violations:
            span.add_event(
                "lakewarden.violation", {k: str(v) for k, v in violation.to_dict().items()}
            )
        if e.error_type is not None:
            span.set_attribute("error.type", e.error_type)
            span.set_status(Status(StatusCode.ERROR, (e.error_message or "")[:256]))
        span.end(end_time=e.end_ns)

    def _metrics(self, e: Event) -> None:
        ins = self._instruments
        attrs: dict[str, Any] = {
            "db.system.name": "duckdb",
            "db.operation.name": e.operation,
            "gen_ai.agent.name": e.agent,
        }
        if e.collection:
            attrs["db.collection.name"] = e.collection
        if e.error_type:
            attrs["error.type"] = e.error_type
        ins.duration.record(max(0, e.end_ns - e.start_ns) / 1e9, attrs)
        ins.statements.add(
            1,
            {
                "gen_ai.agent.name": e.agent,
                "db.operation.name": e.operation,
                "lakewarden.decision": e.decision,
            },
        )
        if e.decision == "blocked":
            for v in e.violations:
                ins.gate_blocks.add(
                    1,
                    {
                        "gen_ai.agent.name": e.agent,
                        "db.collection.name": v.table or "",
                        "lakewarden.check.name": v.rule,
                    },
                )
        if e.rows_written and not e.dry_run:
            for table, rows in e.rows_written.items():
                if rows:
                    ins.rows_written.add(
                        rows,
                        {
                            "gen_ai.agent.name": e.agent,
                            "db.collection.name": table,
                            "db.operation.name": e.operation,
                        },
                    )
