"""Where a governed statement's time goes: an ad-hoc profiler for the benchmarks.

Functions of the pipeline are wrapped, for the duration of a ``with StageTimer(...)`` block, by
timers that keep EXCLUSIVE time (a probe's own time, its probed callees subtracted), so the
stages of one statement add up to its total. Engine calls that no function boundary separates
(``set_commit_message``, ``COMMIT``, a result's conversion to Polars) are timed by a proxy put
around the cursors that make them.

Only time spent on the thread that calls :meth:`StageTimer.statement` counts as the statement's;
probed work on any other thread (a telemetry recorder, or anything moved off the caller's path)
is reported apart as background time. A probe whose target does not exist in the code being
measured is skipped and named in :attr:`StageTimer.missing`, so the profiler keeps working,
with a coarser breakdown, while the pipeline's internals change.
"""

from __future__ import annotations

import functools
import importlib
import re
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from benchmarks import common

# (category, label): the report groups labels under these categories, in this order.
CATEGORIES = (
    "analysis",
    "governance",
    "execution",
    "gate",
    "commit",
    "signals",
    "telemetry",
    "other",
)


@dataclass(frozen=True)
class Probe:
    target: str  # "package.module:Class.method" or "package.module:function"
    label: str
    category: str


# The write path as it is built today (core.session -> store.transaction -> core.commit ->
# core.tracker). Parents are probed too, so what they do outside their probed callees shows up
# under their own label instead of vanishing into "other".
WRITE_PROBES: tuple[Probe, ...] = (
    Probe("lakewarden.core.session:Session.sql", "session: Result, bookkeeping", "other"),
    Probe("lakewarden.core.session:analyze", "analyse (cached by text)", "analysis"),
    Probe("lakewarden.core.session:Session._govern", "grants on the engine's plan", "governance"),
    Probe("lakewarden.store.transaction:Transaction.begin", "write lock + BEGIN", "execution"),
    Probe("lakewarden.store.transaction:Transaction.run", "the statement", "execution"),
    Probe("lakewarden.core.session:Session._conclude", "conclude: audit records etc.", "other"),
    Probe("lakewarden.governance.gate:Gate.judge", "quality gate", "gate"),
    Probe("lakewarden.core.session:commit", "commit stage: other", "other"),
    Probe("lakewarden.store.transaction:Transaction.commit", "commit: other", "commit"),
    Probe("lakewarden.store.audit:insert", "audit row INSERT", "commit"),
    Probe("lakewarden.store.catalog:current_snapshot", "snapshot the commit follows", "commit"),
    Probe("lakewarden.core.tracker:Tracker.stage", "signals: other", "signals"),
    Probe("lakewarden.store.staging:insert", "staged INSERT: other", "execution"),
    Probe("lakewarden.store.catalog:staged_profile", "staged rows measured", "signals"),
    Probe("lakewarden.store.staging:Shapes.get", "stage shape (cached)", "execution"),
    Probe("lakewarden.core.tracker:Tracker.enqueue", "commit order queue", "signals"),
    Probe("lakewarden.core.tracker:Tracker.settle", "tracker: apply in commit order", "signals"),
    Probe("lakewarden.core.tracker:Tracker.sync", "replay of other commits", "signals"),
    Probe("lakewarden.store.catalog:snapshots", "snapshot list", "signals"),
    Probe("lakewarden.store.catalog:insertions", "change feed query", "signals"),
    Probe("lakewarden.store.catalog:changes", "change feed query", "signals"),
    Probe("lakewarden.store.catalog:profile", "profile query", "signals"),
    Probe("lakewarden.signals.delta:from_changes", "delta (Polars)", "signals"),
    Probe("lakewarden.signals.delta:apply", "delta (Polars)", "signals"),
    Probe(
        "lakewarden.store.state:WriteBehind.save", "state hand-off (saved write-behind)", "signals"
    ),
    Probe("lakewarden.store.state:StateStore.save", "state save", "signals"),
    Probe("lakewarden.telemetry.spans:statement", "span bookkeeping", "telemetry"),
    Probe("lakewarden.telemetry.spans:analysed", "span bookkeeping", "telemetry"),
    Probe("lakewarden.telemetry.spans:committed", "span bookkeeping", "telemetry"),
    Probe("lakewarden.telemetry.spans:ended", "span bookkeeping", "telemetry"),
    Probe("lakewarden.telemetry.recorder:Recorder.submit", "recorder hand-off", "telemetry"),
    Probe("lakewarden.telemetry.recorder:Recorder._span", "span export", "telemetry"),
    Probe("lakewarden.telemetry.recorder:Recorder._metrics", "metric points", "telemetry"),
)

# Engine calls on a proxied cursor: (pattern on the statement text, label, category). Method
# calls without a statement (commit, begin, pl) are matched as "<method>".
CURSOR_LABELS: tuple[tuple[str, str, str], ...] = (
    (r"set_commit_message", "set_commit_message", "commit"),
    (r"^CREATE TEMP TABLE temp\.main\.lw_stage", "stage: CREATE TEMP TABLE", "execution"),
    (r"^DROP TABLE temp\.main\.lw_stage", "stage: DROP", "execution"),
    (r"SELECT \* FROM temp\.main\.lw_stage", "stage: rows into the lake table", "execution"),
    (r"^DELETE FROM temp\.main\.lw_stage", "stage: emptied", "execution"),
    (r"temp\.main\.lw_stage", "the statement, into the stage", "execution"),
    (r"^<commit>$", "COMMIT", "commit"),
    (r"^<pl>$|^<arrow>$|^<fetch_arrow_table>$", "change feed to Polars", "signals"),
)

SESSION_LABEL = "session: Result, bookkeeping"


class _Frame:
    __slots__ = ("child", "label")

    def __init__(self, label: str) -> None:
        self.label = label
        self.child = 0.0


class StageTimer:
    """``with StageTimer() as timer:`` installs the probes; ``with timer.statement():`` around
    one call collects that call's stages. :meth:`report` gives medians per stage."""

    def __init__(self, probes: Sequence[Probe] = WRITE_PROBES) -> None:
        self.probes = tuple(probes)
        self.missing: list[str] = []
        self.categories: dict[str, str] = {p.label: p.category for p in self.probes}
        for _, label, category in CURSOR_LABELS:
            self.categories[label] = category
        self.samples: list[dict[str, float]] = []  # per statement: label -> seconds
        self.totals: list[float] = []
        self.lock_held: list[float] = []
        self.background: dict[str, float] = defaultdict(float)
        self._thread: int | None = None
        self._current: dict[str, float] | None = None
        self._stack = threading.local()
        self._undo: list[Callable[[], None]] = []
        self._bg_lock = threading.Lock()

    # -- installing ----------------------------------------------------------------------

    def __enter__(self) -> StageTimer:
        for probe in self.probes:
            if not self._install(probe):
                self.missing.append(probe.target)
        return self

    def __exit__(self, *exc: object) -> None:
        while self._undo:
            self._undo.pop()()

    def _install(self, probe: Probe) -> bool:
        module_name, _, path = probe.target.partition(":")
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            return False
        *parents, attr = path.split(".")
        for name in parents:
            owner = getattr(owner, name, None)
            if owner is None:
                return False
        original = (
            owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
        )
        if original is None or not callable(original):
            return False
        wrapped = self._wrap(original, probe.label)
        setattr(owner, attr, wrapped)
        self._undo.append(lambda: setattr(owner, attr, original))
        return True

    def wrap_cursor(self, holder: Any, attr: str) -> None:
        """Put a timing proxy around ``holder.attr`` (a cursor) while the timer is installed."""
        cur = getattr(holder, attr, None)
        if cur is None:
            self.missing.append(f"{type(holder).__name__}.{attr}")
            return
        setattr(holder, attr, TimedCursor(cur, self))
        self._undo.append(lambda: setattr(holder, attr, cur))

    def wrap_transaction_cursors(self) -> None:
        """Every transaction opened while the timer is installed runs on a timing proxy."""
        try:
            from lakewarden.store.transaction import Transaction
        except ImportError:
            self.missing.append("lakewarden.store.transaction:Transaction")
            return
        original = Transaction.__dict__["__init__"]
        timer = self

        @functools.wraps(original)
        def init(self: Any, cur: Any, *args: Any, **kwargs: Any) -> None:
            original(self, TimedCursor(cur, timer), *args, **kwargs)

        Transaction.__init__ = init  # type: ignore[method-assign]
        self._undo.append(lambda: setattr(Transaction, "__init__", original))

    def wrap_lock(self, holder: Any, attr: str) -> None:
        """Time how long the calling thread holds ``holder.attr`` (a lock) per statement."""
        lock = getattr(holder, attr, None)
        if lock is None:
            self.missing.append(f"{type(holder).__name__}.{attr}")
            return
        setattr(holder, attr, TimedLock(lock, self))
        self._undo.append(lambda: setattr(holder, attr, lock))

    # -- timing --------------------------------------------------------------------------

    def _wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        timer = self

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = timer._enter(label)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timer._leave(frame, time.perf_counter() - start)

        return timed

    def _frames(self) -> list[_Frame]:
        stack = getattr(self._stack, "frames", None)
        if stack is None:
            stack = self._stack.frames = []
        return stack

    def _enter(self, label: str) -> _Frame:
        frame = _Frame(label)
        self._frames().append(frame)
        return frame

    def _leave(self, frame: _Frame, elapsed: float) -> None:
        stack = self._frames()
        stack.pop()
        if stack:
            stack[-1].child += elapsed
        own = elapsed - frame.child
        if threading.get_ident() == self._thread and self._current is not None:
            self._current[frame.label] = self._current.get(frame.label, 0.0) + own
        else:
            with self._bg_lock:
                self.background[frame.label] += own

    def timed_call(self, label: str, fn: Callable[..., Any], *args: Any) -> Any:
        frame = self._enter(label)
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._leave(frame, time.perf_counter() - start)

    @contextmanager
    def statement(self) -> Iterator[None]:
        """Collect the stages of the calls made in this block (one statement)."""
        self._thread = threading.get_ident()
        self._current = {}
        start = time.perf_counter()
        try:
            yield
        finally:
            total = time.perf_counter() - start
            sample, self._current = self._current, None
            held = sample.pop("<lock held>", 0.0)
            self.samples.append(sample)
            self.totals.append(total)
            self.lock_held.append(held)

    def _lock_held(self, seconds: float) -> None:
        if threading.get_ident() == self._thread and self._current is not None:
            self._current["<lock held>"] = self._current.get("<lock held>", 0.0) + seconds

    # -- the report ----------------------------------------------------------------------

    def report(self, prefix: str = "") -> dict[str, str]:
        """Diagnostics lines: median per category and per stage, total and lock hold time."""
        if not self.samples:
            return {}
        n = len(self.samples)
        labels = sorted({label for s in self.samples for label in s})
        per_label = {label: [s.get(label, 0.0) for s in self.samples] for label in labels}
        per_category: dict[str, list[float]] = {}
        for category in CATEGORIES:
            members = [la for la in labels if self.categories.get(la, "other") == category]
            if members:
                per_category[category] = [
                    sum(s.get(la, 0.0) for la in members) for s in self.samples
                ]
        unattributed = [
            total - sum(s.values()) for total, s in zip(self.totals, self.samples, strict=True)
        ]
        out: dict[str, str] = {}
        total_median = statistics.median(self.totals)
        out[f"{prefix}breakdown (n={n}, medians; probes add ~1-2 us per probed call)"] = (
            f"total {common.fmt_s(total_median)}, write lock held "
            f"{common.fmt_s(statistics.median(self.lock_held))}"
        )
        for category, values in per_category.items():
            members = [la for la in labels if self.categories.get(la, "other") == category]
            detail = ", ".join(
                f"{la} {common.median_s(per_label[la])}"
                for la in sorted(members, key=lambda la: -statistics.median(per_label[la]))
            )
            out[f"{prefix}  {category}"] = f"{common.median_s(values)} ({detail})"
        out[f"{prefix}  outside every probe"] = common.median_s(unattributed)
        if self.background:
            out[f"{prefix}  background threads, per statement (mean)"] = ", ".join(
                f"{label} {common.fmt_s(seconds / n)}"
                for label, seconds in sorted(self.background.items(), key=lambda kv: -kv[1])
            )
        if self.missing:
            out[f"{prefix}  probes with no target in this code"] = ", ".join(self.missing)
        return out


class TimedCursor:
    """A DuckDB cursor whose engine calls are timed (labelled by :data:`CURSOR_LABELS`);
    ``execute`` returns the proxy, as DuckDB returns the cursor, so chained calls are timed
    too. Calls that match no label run untimed (their time stays with the caller's probe)."""

    def __init__(self, cur: Any, timer: StageTimer) -> None:
        self._cur = cur
        self._timer = timer

    def _label(self, key: str) -> tuple[str, str] | None:
        for pattern, label, category in CURSOR_LABELS:
            if re.search(pattern, key):
                return label, category
        return None

    def _call(self, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        found = self._label(key)
        if found is None:
            return fn(*args)
        return self._timer.timed_call(found[0], fn, *args)

    def execute(self, query: str, parameters: Any = None) -> TimedCursor:
        self._call(query, self._cur.execute, query, parameters)
        return self

    def executemany(self, query: str, parameters: Any = None) -> TimedCursor:
        self._call(query, self._cur.executemany, query, parameters)
        return self

    def commit(self) -> Any:
        return self._call("<commit>", self._cur.commit)

    def pl(self, *args: Any) -> Any:
        return self._call("<pl>", self._cur.pl, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


class TimedLock:
    """A lock (re-entrant or not) that reports how long the statement's thread held it."""

    def __init__(self, lock: Any, timer: StageTimer) -> None:
        self._lock = lock
        self._timer = timer
        self._local = threading.local()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = bool(self._lock.acquire(blocking, timeout))
        if got:
            depth = getattr(self._local, "depth", 0)
            if depth == 0:
                self._local.since = time.perf_counter()
            self._local.depth = depth + 1
        return got

    def release(self) -> None:
        depth = self._local.depth - 1
        self._local.depth = depth
        if depth == 0:
            self._timer._lock_held(time.perf_counter() - self._local.since)
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lock, name)
