"""Continuous monitoring: quality is judged on a clock, not only when someone writes.

Each tick picks up commits made outside this process (another writer on a shared catalog, a
batch job), re-evaluates every check at the current time (so a table nobody writes turns stale)
and reports each check that changes state: a span event on a ``CHECK <table>`` span and a log
line. The warden's clock is injectable, so tests move time instead of sleeping. Every
``maintenance.every`` of the policy, a tick also runs the lake's maintenance.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
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
        self._maintained_at = time.monotonic()  # the first run comes one period after start
        self._failing: set[str] = set()

    def tick(self) -> list[Transition]:
        """One evaluation: catch up with the lake, judge every check now, report changes."""
        now = self.warden.clock()
        self._attempt("pick up new commits", lambda: self.warden.refresh(poll=True))
        self._attempt("checkpoint the lake's database files", self.warden.engine.checkpoint)
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
        self._maybe_maintain()
        return flips

    def _attempt(self, what: str, step: Callable[[], object]) -> None:
        """Run one step of the tick. A failure is logged when it starts and when it ends, not at
        every tick: a catalog outage would otherwise log a traceback every poll interval."""
        try:
            step()
        except Exception as exc:
            if what not in self._failing:
                self._failing.add(what)
                log.warning(
                    "could not %s (%s); trying again every %g s, judging what is known",
                    what,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    self.interval_s,
                    exc_info=True,
                )
            return
        if what in self._failing:
            self._failing.discard(what)
            log.warning("could %s again", what)

    def _maybe_maintain(self) -> None:
        rules = self.warden.policy.maintenance
        if not rules.enabled or time.monotonic() - self._maintained_at < rules.every:
            return
        self._maintained_at = time.monotonic()
        try:
            run = self.warden.maintain()
        except Exception:
            log.exception("lake maintenance failed; it runs again in %.0f s", rules.every)
            return
        if run.files_merged or run.snapshots_expired or run.files_deleted:
            log.info(
                "lake maintenance: %d files merged into %d, %d snapshots expired, %d files "
                "deleted, in %.2f s",
                run.files_merged,
                run.files_written,
                run.snapshots_expired,
                run.files_deleted,
                run.seconds,
            )

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
