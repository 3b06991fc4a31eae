"""Continuous monitoring: quality is judged on a clock, not only when someone writes.

Each tick picks up commits made outside this process (another writer on a shared catalog, a
batch job), re-evaluates every check at the current time (so a table nobody writes turns stale)
and reports each check that changes state: a span event on a ``CHECK <table>`` span and a log
line. The warden's clock is injectable, so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from lakewarden.core.warden import Warden
from lakewarden.telemetry import spans

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transition:
    table: str
    check: str
    passing: bool
    detail: str
    at: float


class Monitor:
    def __init__(self, warden: Warden, interval_s: float | None = None) -> None:
        self.warden = warden
        self.interval_s = interval_s or warden.settings.poll_interval_s
        self._states: dict[tuple[str, str], bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[Transition]:
        """One evaluation: catch up with the lake, judge every check now, report changes."""
        now = self.warden.clock()
        try:
            self.warden.refresh(poll=True)
        except Exception:
            log.exception("could not pick up new commits; judging what is known")
        try:
            self.warden.engine.checkpoint()
        except Exception:
            log.exception("could not checkpoint the lake's database files")
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
        self.warden.recorder.submit(
            spans.check(flip.table, flip.check, flip.passing, flip.detail, flip.at)
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
