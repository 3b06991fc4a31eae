"""Anomaly scores of a table's volume and freshness, kept up to date write by write. Pure.

- Volume: the rows each write changed (inserted plus deleted; a write of 0 rows is a load of 0,
  the deepest drop there is) against the table's seasonal profile of earlier writes; for tables
  written more often than every quarter of an hour, the rows of each hour instead.
- Freshness: the time since the latest write against the recent gaps between writes: late when
  it is too long; early when the latest gap was too short (with ``direction: early`` or ``both``).

:class:`TableMonitor` is fed each write once (O(1) amortised) and answers a poll without scoring
again; see :mod:`lakewarden.signals.detector` for the models.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from lakewarden.signals.anomaly import AnomalyRule, AnomalyScore
from lakewarden.signals.detector import FreshnessModel, VolumeModel
from lakewarden.signals.table_state import WriteRecord

VOLUME = "volume"
FRESHNESS = "freshness"
_SHOWN = 48  # recent values kept for display
_FREQUENT_S = 900.0  # writes closer than this (median) are judged per hour of rows
_HOUR_S = 3600.0


@dataclass(frozen=True)
class Monitored:
    """One monitored signal of one table: its current value, verdict and recent values."""

    signal: str  # volume | freshness
    value: float | None
    result: AnomalyScore
    history: tuple[float, ...]  # recent values, oldest first
    expected_now: AnomalyScore | None = None  # volume: the range for a load arriving now
    per: str | None = None  # volume: judged per "write" or per "hour" of rows

    def to_dict(self, keep: int = _SHOWN) -> dict[str, object]:
        r = self.result
        out: dict[str, object] = {
            "signal": self.signal,
            "value": self.value,
            "score": r.score,
            "anomalous": r.anomalous,
            "expected": r.expected,
            "lower": r.lower,
            "upper": r.upper,
            "training_size": r.training_size,
            "reason": r.reason,
            "profile": r.profile,
            "history": list(self.history[-keep:]),
        }
        if self.per is not None:
            out["per"] = self.per
        if self.expected_now is not None:
            now = self.expected_now
            out["now"] = {
                "expected": now.expected,
                "lower": now.lower,
                "upper": now.upper,
                "profile": now.profile,
                "reason": now.reason,
            }
        return out


def volume_of(write: WriteRecord) -> float:
    return float(write.rows_added + write.rows_removed)


class TableMonitor:
    """The volume and freshness models of one table (either may be switched off).

    Volume is judged per write while writes are at least a quarter of an hour apart (typical
    loads), and per hour of rows while they come more often (micro-batches, streams), where the
    size of one write says little: :attr:`volume` is the model in use.
    """

    def __init__(self, volume: AnomalyRule | None, freshness: AnomalyRule | None) -> None:
        self.per_write = VolumeModel(volume) if volume is not None else None
        self.per_hour = VolumeModel(volume) if volume is not None else None
        self.freshness = FreshnessModel(freshness) if freshness is not None else None
        self._recent_rows: deque[float] = deque(maxlen=_SHOWN)
        self._recent_gaps: deque[float] = deque(maxlen=_SHOWN)
        self._last: float | None = None
        self._frequent = False
        self._writes = 0
        self._hour: int | None = None  # the epoch hour whose rows are being summed
        self._hour_rows = 0.0
        self.accepted_at: float | None = None
        # An idle table's poll returns what the last one built: the volume view changes only
        # with a write, an accept or the expectation for the hour (which the model keeps).
        self._version = 0
        self._volume_view: tuple[int, AnomalyScore | None, Monitored] | None = None
        self._gaps_view: tuple[int, tuple[float, ...]] | None = None

    @property
    def volume(self) -> VolumeModel | None:
        return self.per_hour if self._frequent else self.per_write

    @property
    def per(self) -> str:
        return "hour" if self._frequent else "write"

    def add(self, write: WriteRecord) -> None:
        self._version += 1
        rows = volume_of(write)
        if self.per_write is not None:
            self.per_write.add(write.time, rows)
        if self.freshness is not None:
            self.freshness.add(write.time)
        self._recent_rows.append(rows)
        if self._last is not None:
            self._recent_gaps.append(max(0.0, write.time - self._last))
            self._writes += 1
            # A first burst of writes says nothing about the pace: decide on eight gaps or more.
            if self._writes % 8 == 0:
                self._frequent = statistics.median(self._recent_gaps) < _FREQUENT_S
        self._last = write.time
        self._add_to_hour(write.time, rows)

    def _add_to_hour(self, at: float, rows: float) -> None:
        hour = int(at // _HOUR_S)
        if self._hour is not None and hour > self._hour:
            # Only tables written often pay for the hourly model: it is judged when an hour closes.
            if self.per_hour is not None and self._frequent:
                self.per_hour.add((self._hour + 1) * _HOUR_S - 1, self._hour_rows)
            self._hour_rows = 0.0
        if self._hour is None or hour > self._hour:
            self._hour = hour
        self._hour_rows += rows

    def accept(self, at: float) -> bool:
        """Take the current level (and pace) as the new normal; False when nothing changed."""
        self._version += 1
        self.accepted_at = at
        changed = False
        for model in (self.per_write, self.per_hour):
            if model is not None:
                changed |= model.accept()
        if self.freshness is not None:
            fresh = self.freshness.evaluate(at)[1]
            if fresh.anomalous:
                changed |= self.freshness.accept()
        return changed

    def evaluate(self, now: float) -> dict[str, Monitored]:
        """Both verdicts as of ``now``. Between writes nothing is scored again: the volume view
        is the one already built until the hour's expectation changes, and freshness only
        measures the time since the last write against its fixed band."""
        out: dict[str, Monitored] = {}
        model = self.volume
        if model is not None:
            expected = model.expected_at(now) if model.latest_time is not None else None
            view = self._volume_view
            if view is None or view[0] != self._version or view[1] is not expected:
                monitored = Monitored(
                    VOLUME,
                    model.latest_value,
                    model.latest,
                    tuple(self._recent_rows),
                    expected,
                    self.per,
                )
                view = self._volume_view = (self._version, expected, monitored)
            out[VOLUME] = view[2]
        if self.freshness is not None:
            current, result = self.freshness.evaluate(now)
            gaps = self._gaps_view
            if gaps is None or gaps[0] != self._version:
                gaps = self._gaps_view = (self._version, tuple(self._recent_gaps))
            out[FRESHNESS] = Monitored(FRESHNESS, current, result, gaps[1])
        return out


def replay(
    writes: list[WriteRecord],
    volume: AnomalyRule | None,
    freshness: AnomalyRule | None,
    accepts: Sequence[float] = (),
) -> TableMonitor:
    """A monitor fed ``writes`` oldest-first, each accept applied after the writes before it."""
    monitor = TableMonitor(volume, freshness)
    pending = sorted(accepts)
    for write in writes:
        while pending and pending[0] < write.time:
            monitor.accept(pending.pop(0))
        monitor.add(write)
    for at in pending:
        monitor.accept(at)
    return monitor
