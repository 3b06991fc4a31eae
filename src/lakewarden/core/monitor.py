"""Continuous monitoring: quality is judged on a clock, not only when someone writes.

Each tick picks up commits made outside this process (another writer on a shared catalog, a
batch job), re-evaluates every check at the current time (so a table nobody writes turns stale)
and reports each check that changes state: a span event on a ``CHECK <table>`` span and a log
line. The warden's clock is injectable, so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lakewarden.errors import ConfigurationError
from lakewarden.telemetry.recorder import Event, new_ids

if TYPE_CHECKING:
    from lakewarden.core.warden import Warden

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0


def interval_from_env() -> float:
    """``LAKEWARDEN_POLL_INTERVAL_S``: seconds between evaluations (default 5)."""
    raw = os.environ.get("LAKEWARDEN_POLL_INTERVAL_S", "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"LAKEWARDEN_POLL_INTERVAL_S={raw!r} is not a number") from exc
    if value <= 0:
        raise ConfigurationError("LAKEWARDEN_POLL_INTERVAL_S must be > 0")
    return value


@dataclass(frozen=True)
class Transition:
    table: str
    check: str
    passing: bool
    detail: str
    at: float


class Monitor:
    def __init__(self, warden: Warden, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.warden = warden
        self.interval_s = interval_s
        self._states: dict[tuple[str, str], bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[Transition]:
        """One evaluation: catch up with the lake, judge every check now, report changes."""
        now = self.warden.clock()
        try:
            self.warden.refresh()
        except Exception:
            log.exception("could not pick up new commits; judging what is known")
        flips = []
        for table, findings in self.warden.checks(now=now).items():
            for f in findings:
                key = (table, f.check)
                before = self._states.get(key)
                self._states[key] = f.passing
                if before is not None and before != f.passing:
                    flips.append(Transition(table, f.check, f.passing, f.detail, now))
        for flip in flips:
            self._report(flip)
        return flips

    def _report(self, flip: Transition) -> None:
        state = "passing again" if flip.passing else "failing"
        (log.info if flip.passing else log.warning)(
            "check %s of %s is %s: %s", flip.check, flip.table, state, flip.detail
        )
        trace_id, span_id = new_ids(None)
        stamp = int(flip.at * 1e9)
        self.warden.recorder.submit(
            Event(
                name=f"CHECK {flip.table}",
                agent="lakewarden",
                operation="CHECK",
                trace_id=trace_id,
                span_id=span_id,
                parent=None,
                start_ns=stamp,
                end_ns=stamp,
                collection=flip.table,
                decision="",
                record_metrics=False,
                attributes={
                    "db.collection.name": flip.table,
                    "lakewarden.check.name": flip.check,
                    "lakewarden.check.passing": flip.passing,
                    "lakewarden.check.detail": flip.detail,
                },
                error_type=None if flip.passing else "check_failed",
                error_message=None if flip.passing else f"{flip.check}: {flip.detail}",
            )
        )

    def start(self) -> Monitor:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="lakewarden-monitor", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("monitoring tick failed")
            self._stop.wait(self.interval_s)
