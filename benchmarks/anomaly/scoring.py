"""Score synthetic series with lakewarden's detector and with two reference methods.

lakewarden: each series is replayed write by write through :class:`TableMonitor`, the object the
server keeps per table, with the server's default rules; freshness is judged half an hour into
every hour, as a poll would see it. A clean hour is flagged if its write's volume verdict or that
poll is anomalous.

References, scored on rows per hour (a missing load is an hour of 0 rows), as those tools see it:
- Elementary's volume z-score: mean and sample standard deviation of the last 14 days of hourly
  buckets, the current bucket included; |z| > 3. With ``hour_of_day`` seasonality the training
  set is the same hour of day over the 14 days (15 points with the current one). Its
  ``hour_of_week`` variant is not run: over 60 days it has at most 9 points, and with the current
  point inside a set of n, |z| cannot exceed (n - 1) / sqrt(n) < 3, so it never fires.
- re_data's modified z: 0.6745 (x - median) / MAD over the previous 14 days; |z| > 3.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from benchmarks.anomaly.generator import MISSING, SHIFT, TRAIN_DAYS, Series
from lakewarden.governance.policy import AnomalyRule as PolicyRule
from lakewarden.governance.policy import FreshnessRule
from lakewarden.signals.anomaly import AnomalyRule
from lakewarden.signals.monitoring import TableMonitor
from lakewarden.signals.table_state import WriteRecord

SETTLE_LIMIT_H = 48


def default_rules(tz: str) -> tuple[AnomalyRule, AnomalyRule]:
    """The rules a table gets from a policy that only names its time zone."""
    volume = PolicyRule(timezone=tz).scorer()
    freshness = FreshnessRule(timezone=tz).scorer()
    return volume, freshness


def lakewarden_flags(series: Series, timing: list[float] | None = None) -> np.ndarray:
    volume, freshness = default_rules(series.tz)
    monitor = TableMonitor(volume, freshness)
    flags = np.zeros(series.hours, dtype=bool)
    epoch0 = series.start.timestamp()
    w = 0
    n = len(series.write_times)
    spent = 0.0
    for h in range(series.hours):
        if w < n and series.write_hour[w] == h:
            record = WriteRecord(series.write_times[w], series.write_rows[w], 0, "etl", None)
            # CPU time of this thread: on a shared machine wall time mostly measures the queue.
            started = time.thread_time()
            monitor.add(record)
            spent += time.thread_time() - started
            flags[h] |= monitor.volume is not None and monitor.volume.latest.anomalous
            w += 1
        poll = monitor.evaluate(epoch0 + h * 3600 + 1800)
        flags[h] |= poll["freshness"].result.anomalous
    if timing is not None:
        timing.append(spent / max(n, 1))
    return flags


def hourly(series: Series) -> np.ndarray:
    out = np.zeros(series.hours)
    for h, rows in zip(series.write_hour, series.write_rows, strict=True):
        out[h] += rows
    return out


def elementary_flags(series: Series, seasonal: bool = False) -> np.ndarray:
    x = hourly(series)
    flags = np.zeros(series.hours, dtype=bool)
    for h in range(TRAIN_DAYS * 24, series.hours):
        if seasonal:
            train = x[h - TRAIN_DAYS * 24 : h + 1][::-1][::24]
        else:
            train = x[h - TRAIN_DAYS * 24 : h + 1]
        if train.size < 2:
            continue
        sd = float(train.std(ddof=1))
        if sd > 0:
            flags[h] = abs((x[h] - float(train.mean())) / sd) > 3
    return flags


def redata_flags(series: Series) -> np.ndarray:
    x = hourly(series)
    flags = np.zeros(series.hours, dtype=bool)
    for h in range(TRAIN_DAYS * 24, series.hours):
        train = x[h - TRAIN_DAYS * 24 : h]
        med = float(np.median(train))
        mad = float(np.median(np.abs(train - med)))
        if mad > 0:
            flags[h] = abs(0.6745 * (x[h] - med) / mad) > 3
    return flags


METHODS: dict[str, Callable[[Series], np.ndarray]] = {
    "lakewarden": lakewarden_flags,
    "elementary": elementary_flags,
    "elementary_hod": lambda s: elementary_flags(s, seasonal=True),
    "re_data": redata_flags,
}


@dataclass
class Tally:
    incidents: int = 0
    caught: int = 0
    clean: int = 0
    false: int = 0
    by_type: dict[str, list[int]] = field(default_factory=dict)  # type -> [incidents, caught]
    settle_hours: list[int] = field(default_factory=list)
    dst_clean: int = 0
    dst_false: int = 0

    def add(self, other: Tally) -> None:
        self.incidents += other.incidents
        self.caught += other.caught
        self.clean += other.clean
        self.false += other.false
        for k, (a, b) in other.by_type.items():
            t = self.by_type.setdefault(k, [0, 0])
            t[0] += a
            t[1] += b
        self.settle_hours += other.settle_hours
        self.dst_clean += other.dst_clean
        self.dst_false += other.dst_false

    @property
    def recall(self) -> float:
        return self.caught / max(self.incidents, 1)

    @property
    def fpr(self) -> float:
        return self.false / max(self.clean, 1)


def tally(series: Series, flags: np.ndarray, dst_hours: set[int] | None = None) -> Tally:
    t = Tally()
    first = TRAIN_DAYS * 24
    dirty = np.zeros(series.hours, dtype=bool)
    dirty[:first] = True
    others = np.zeros(series.hours, dtype=bool)
    for inc in series.incidents:
        if inc.kind != SHIFT:
            others[inc.start : inc.start + inc.hours + (inc.kind == MISSING)] = True
    for inc in series.incidents:
        kind = inc.kind
        if kind == SHIFT:
            window = flags[inc.start : inc.start + 24]
            dirty[inc.start : inc.start + SETTLE_LIMIT_H] = True
            t.settle_hours.append(_episode_hours(flags[inc.start :] & ~others[inc.start :]))
        else:
            window = flags[inc.start : inc.start + inc.hours]
            dirty[inc.start : inc.start + inc.hours] = True
            if kind == MISSING:
                dirty[inc.start + 1] = True  # its gap closes with the next load
        t.incidents += 1
        hit = bool(window.any())
        t.caught += hit
        entry = t.by_type.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += hit
    clean = ~dirty
    t.clean = int(clean.sum())
    t.false = int((flags & clean).sum())
    if dst_hours:
        idx = np.array(sorted(h for h in dst_hours if h < series.hours), dtype=int)
        if idx.size:
            t.dst_clean = int(clean[idx].sum())
            t.dst_false = int((flags[idx] & clean[idx]).sum())
    return t


def dst_week(series: Series) -> set[int]:
    """Hour indexes of the week after the series' first UTC-offset change (none for UTC)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(series.tz)
    epoch0 = series.start.timestamp()
    from datetime import UTC, datetime

    offsets = [
        datetime.fromtimestamp(epoch0 + h * 3600, UTC).astimezone(zone).utcoffset()
        for h in range(0, series.hours, 1)
    ]
    for h in range(1, len(offsets)):
        if offsets[h] != offsets[h - 1]:
            return set(range(h, h + 168))
    return set()


def _episode_hours(flags: np.ndarray) -> int:
    """Hours from the shift to its last alert, an alert episode ending after 24 quiet hours."""
    last = -1
    for h in np.flatnonzero(flags):
        if last >= 0 and h - last > 24:
            break
        last = int(h)
    return last + 1


def median_or_zero(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
