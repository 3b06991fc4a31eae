"""Incremental anomaly models of a table's loads: volume per write and time between writes.

Each model is fed the table's writes oldest-first, once each, and keeps only bounded recent state,
so a new write costs O(1) amortised and asking for the verdict again (a poll of an idle table)
does no scoring work. Replaying the same writes always gives the same model, which is how a
restarted server rebuilds it from the persisted write history.

Volume, and why:

- Log scale (``log1p(rows)``): load volumes vary multiplicatively (a busy hour is a multiple of a
  quiet one, and so is its noise), so a linear band around a pooled median is too wide at quiet
  hours and too narrow at busy ones, and an 85% drop is a fixed distance below normal only on the
  log scale. Small counts add Poisson noise of about ``1/sqrt(rows)`` in log terms, which sets a
  floor under the spread.
- Profiles, chosen from the data: pooled (one level), hour of day, hour of day plus a weekday
  offset, and hour of week, all in the table's own time zone so a rhythm follows the owner's wall
  clock through daylight-saving changes. Every profile forecasts each training point before
  learning it; the profile whose recent one-step errors are smallest wins, a finer one only when
  clearly better (its forecasts rest on fewer points). A profile that lacks history for the
  current hour falls back to the next coarser one, and the verdict names the profile used.
- Spread: 1.4826 x the median absolute forecast error of the chosen profile. Those errors include
  the forecast's own uncertainty, so no small-sample widening is needed. When more than half the
  errors are exactly 0 (repeated values) the mean absolute error sets the spread instead.
- Training excludes flagged points, so an incident does not widen the band that should catch the
  next one. A change that persists on one side for ``settle_s`` becomes the new normal: the
  profiles are shifted by the median distance of the loads since the change began and those
  loads are learnt. ``accept()`` does the same at once. The shift is then re-estimated from
  every load since the change until they span twice ``settle_s``: the first estimate rests on
  one stretch of the day or week, and frozen there its error would make ordinary noise alert
  days after the change.

Freshness scores the time since the latest write against the recent gaps between writes (linear
robust z: gaps are steady, and a missing load doubles one), with ``late`` (a gap too long),
``early`` (the latest gap too short) or ``both``.

Pure Python and numpy: no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from lakewarden.signals.anomaly import (
    AnomalyRule,
    AnomalyScore,
    _change_text,
    _median,
    _num,
    _range_text,
)

POOLED = "pooled"
HOUR_OF_DAY = "hour_of_day"
DAY_OF_WEEK = "hour_of_day_by_weekday"
HOUR_OF_WEEK = "hour_of_week"
PROFILES = (POOLED, HOUR_OF_DAY, DAY_OF_WEEK, HOUR_OF_WEEK)  # coarse to fine
# Which profiles each policy ``seasonality`` may use.
_ALLOWED = {
    "auto": PROFILES,
    "none": (POOLED,),
    "hour_of_day": (POOLED, HOUR_OF_DAY),
    "hour_of_week": (POOLED, HOUR_OF_DAY, DAY_OF_WEEK, HOUR_OF_WEEK),
}
_MAD_TO_SIGMA = 1.4826
_MEAN_TO_SIGMA = 1.2533  # mean absolute deviation of normal noise x this = sigma
_POOLED_KEEP = 24 * 14
_DAY_KEEP = 14  # points per hour-of-day bucket: two weeks of hourly loads
_WEEK_KEEP = 6  # points per hour-of-week bucket
_OFFSET_KEEP = 72  # hour-of-day errors per weekday: three of that weekday's days
_ERRORS_KEEP = 7 * _OFFSET_KEEP  # one-step errors per profile behind its spread
_MIN_BUCKET = 3  # a median of fewer points is one of them
_REFINE = 12  # loads a shift's final estimate rests on at least
# Loads a settle window or run holds at most: a table written every few seconds settles on its
# latest loads rather than on a day of them, and memory stays bounded.
_WINDOW_KEEP = 2048
_MIN_OFFSET = 12  # half a day of a weekday before its offset is trusted
_FINER = 0.85  # a finer profile must cut the spread by 15% to be chosen
_MIN_SPREAD = 0.01  # never assume less than 1% noise on the log scale
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class _Ring:
    """Fixed-size float ring buffer: bounded memory, and numpy statistics without copies."""

    __slots__ = ("_data", "_i", "_n")

    def __init__(self, size: int) -> None:
        self._data = np.zeros(size, dtype=np.float64)
        self._n = 0
        self._i = 0

    def add(self, x: float) -> None:
        self._data[self._i] = x
        self._i = (self._i + 1) % self._data.size
        self._n = min(self._n + 1, self._data.size)

    def __len__(self) -> int:
        return self._n

    def values(self) -> npt.NDArray[np.float64]:
        return self._data[: self._n] if self._n < self._data.size else self._data

    def clear(self) -> None:
        self._n = self._i = 0

    def fill(self, values: list[float]) -> None:
        kept = values[-self._data.size :]
        self._data[: len(kept)] = kept
        self._n = len(kept)
        self._i = self._n % self._data.size


def _spread(errors: npt.NDArray[np.float64]) -> float:
    absolute = np.abs(errors)
    mad = _MAD_TO_SIGMA * _median(absolute)
    if mad > 0:
        return mad
    # Over half the errors are exactly 0: repeated values. The MAD says "no noise at all", and a
    # value seen before would score as infinitely surprising; the mean error still sees it.
    return _MEAN_TO_SIGMA * float(absolute.mean())


class VolumeModel:
    """Rows per write of one table, learnt incrementally; see the module docstring."""

    def __init__(self, rule: AnomalyRule) -> None:
        self.rule = rule
        self._zone = ZoneInfo(rule.timezone)
        self._profiles = _ALLOWED[rule.seasonality]
        self._pooled = deque[float](maxlen=_POOLED_KEEP)
        self._day = [deque[float](maxlen=_DAY_KEEP) for _ in range(24)]
        self._week = [deque[float](maxlen=_WEEK_KEEP) for _ in range(168)]
        self._by_weekday = [deque[tuple[int, float]](maxlen=_OFFSET_KEEP) for _ in range(7)]
        self._day_median = [0.0] * 24  # medians kept as points arrive: scoring never sorts
        self._week_median = [0.0] * 168
        self._day_number = -1
        self._offset = [0.0] * 7
        self._errors = {p: _Ring(_ERRORS_KEEP) for p in PROFILES}
        self._spreads = dict.fromkeys(PROFILES, 0.0)
        self._stale = 0  # training points since the spreads were computed
        self._pooled_median = 0.0
        self._version = 0  # bumped by every change of state: keys the cached expectation
        # (version, from, until, expectation): valid for loads at from <= t < until
        self._cached: tuple[int, float, float, AnomalyScore] | None = None
        self._shift = 0.0  # log-level change accepted since the profiles were learnt
        self._first: float | None = None
        # A load's "level" is its log distance from the profile with no shift applied, so levels
        # stay comparable while the shift is being estimated.
        # Loads since the latest anomaly: time, y, weekday, hour, day, level, held out of training
        self._run: list[tuple[float, float, int, int, int, float, bool]] = []
        self._run_sign = 0
        self._calm = 0  # consecutive points of the run back within half the threshold
        # Levels of the loads since the latest change began, while its shift is being estimated
        self._since: list[float] | None = None
        self._since_at = 0.0  # when that change began
        # (time, level, z) of the loads within settle_s (at most _WINDOW_KEEP)
        self._recent = deque[tuple[float, float, float]](maxlen=_WINDOW_KEEP)
        self._window_from: float | None = None  # first load of the settle window as it stands
        self.latest: AnomalyScore = _none("no load has been seen yet")
        self.latest_value: float | None = None
        self.latest_time: float | None = None

    # -- feeding ----------------------------------------------------------------------------

    def add(self, at: float, rows: float) -> AnomalyScore:
        """Score a write of ``rows`` rows at epoch ``at``, then learn from it."""
        local = datetime.fromtimestamp(at, self._zone)
        dow, hour, day = local.weekday(), local.hour, local.toordinal()
        y = math.log1p(max(rows, 0.0))
        if self._first is None:
            self._first = at
        self._version += 1
        forecasts = self._forecasts(dow, hour)
        verdict, error, z = self._score(at, rows, y, dow, hour, forecasts)
        self.latest, self.latest_value, self.latest_time = verdict, float(rows), at
        level = error + self._shift
        if verdict.score is not None and self._since is not None:
            self._refine(at, level)
        if verdict.score is not None and self._level_moved(at, level, z):
            self._learn(y - self._shift, dow, hour, day)
            return verdict
        sign = 1 if error > 0 else -1
        far = verdict.score is not None and sign * z >= self.rule.threshold / 2
        if verdict.anomalous and not self._run:
            self._run_sign, self._calm = sign, 0
        if self._run or verdict.anomalous:
            # Inside a run every point is kept (a shift near the threshold is not flagged every
            # hour); only the ones on the run's side stay out of training until it is judged.
            held = far and sign == self._run_sign
            self._run.append((at, y, dow, hour, day, level, held))
            self._calm = 0 if held else self._calm + 1
            if self._calm >= _MIN_BUCKET:  # back to normal: the excursion was an incident
                self._run, self._calm = [], 0
            elif len(self._run) >= _WINDOW_KEEP or (
                at - self._run[0][0] >= self.rule.settle_s and len(self._run) >= _MIN_BUCKET
            ):
                self._settle()
                return verdict
            if held:
                return verdict
        self._learn(y - self._shift, dow, hour, day, forecasts)
        return verdict

    def accept(self) -> bool:
        """Take the current run of anomalous loads as the new normal; False when there is none."""
        if not self._run:
            return False
        self._settle()
        if self.latest_time is not None and self.latest_value is not None:
            # Judge the latest load again against the accepted level, so its alert stops now.
            local = datetime.fromtimestamp(self.latest_time, self._zone)
            dow, hour = local.weekday(), local.hour
            y = math.log1p(max(self.latest_value, 0.0))
            forecasts = self._forecasts(dow, hour)
            self.latest = self._score(self.latest_time, self.latest_value, y, dow, hour, forecasts)[
                0
            ]
        self._version += 1
        return True

    def _level_moved(self, at: float, level: float, z: float) -> bool:
        """Settle a change that keeps two in three loads of a whole ``settle_s`` window at least
        half the threshold away on one side, although it flags only now and then (a modest shift
        on a noisy table, which breaks every run); True when it did."""
        recent = self._recent
        recent.append((at, level, z))
        horizon = at - self.rule.settle_s
        while recent[0][0] < horizon:
            recent.popleft()
        if self._window_from is None:
            self._window_from = at
        half = self.rule.threshold / 2
        # Only a load far out itself can complete the pattern: the rest skip the sort. The
        # window must span settle_s since it last restarted: a window of a few loads right
        # after a settle would re-estimate the shift from their noise alone.
        if abs(z) < half or self._window_from > horizon or len(recent) < _MIN_BUCKET:
            return False
        zs = sorted(z for *_, z in recent)
        k = len(zs) // 3  # two in three loads of the window on one side, far out
        if zs[k] < half and zs[-1 - k] > -half:
            return False
        side = 1 if zs[k] >= half else -1
        # The change began at the window's first load out on its side; the loads before it are
        # the old level and would pull the estimate back towards it.
        start = next(i for i, (*_, zi) in enumerate(recent) if side * zi >= half)
        moved = list(recent)[start:]
        self._begin_shift(moved[0][0], [lv for _, lv, _ in moved])
        return True

    def _settle(self) -> None:
        self._begin_shift(self._run[0][0], [lv for *_, lv, _ in self._run])

    def _begin_shift(self, began: float, levels: list[float]) -> None:
        """Take ``levels`` (the loads since the change began) as the new normal, and keep
        refining the estimate with the loads that follow (see :meth:`_refine`)."""
        self._shift = statistics.median(levels)
        self._since, self._since_at = levels, began
        self._recent.clear()
        self._window_from = None
        for _, y, dow, hour, day, _, held in self._run:
            if held:
                self._learn(y - self._shift, dow, hour, day)
        self._run, self._calm = [], 0

    def _refine(self, at: float, level: float) -> None:
        """Re-estimate the shift from every load since the change began, until they span
        twice ``settle_s``.

        A first estimate rests on the loads of one stretch of the day or week, and the profile
        of that stretch has an error of its own, so a shift frozen then leaves a bias of a
        standard error or more that later noise lifts over the threshold now and then.
        Estimating over whole days averages it away. A median: incidents inside the window
        move it by a load at most.
        """
        since = self._since
        assert since is not None
        since.append(level)
        n = len(since)
        done = n >= _WINDOW_KEEP or (at - self._since_at >= 2 * self.rule.settle_s and n >= _REFINE)
        # Hourly loads hold a few dozen levels: sorting them per load is cheap. A table
        # written every few seconds holds thousands, so its estimate moves every 8th load.
        if done or n <= 64 or n % 8 == 0:
            self._shift = statistics.median(since)
        if done:
            self._since = None

    def _refit_offsets(self) -> None:
        # Against today's hour-of-day medians, not those of the day a point was learnt: early
        # medians rest on a few days (maybe a weekend), so offsets fixed then would stay wrong.
        fits: list[float] = []
        for dow, points in enumerate(self._by_weekday):
            if len(points) >= _MIN_OFFSET:
                deviations = [u - self._day_median[h] for h, u in points]
                offset = self._offset[dow] = statistics.median(deviations)
                # The one-step errors of the first days used offsets from a day or two; judge
                # this profile by how well today's offsets fit the points they describe.
                fits.extend(d - offset for d in deviations)
        self._errors[DAY_OF_WEEK].fill(fits)
        if fits:
            self._spreads[DAY_OF_WEEK] = _spread(self._errors[DAY_OF_WEEK].values())

    def _learn(
        self, u: float, dow: int, hour: int, day: int, forecasts: dict[str, float] | None = None
    ) -> None:
        if forecasts is None:
            forecasts = self._forecasts(dow, hour)
        for profile, forecast in forecasts.items():
            if profile != DAY_OF_WEEK:  # refit with the offsets, see _refit_offsets
                self._errors[profile].add(u - forecast)
        if DAY_OF_WEEK in self._profiles:
            self._by_weekday[dow].append((hour, u))
        self._pooled.append(u)
        if self._stale >= 7 or len(self._pooled) < 64:
            self._pooled_median = statistics.median(self._pooled)
        self._day[hour].append(u)
        self._week[dow * 24 + hour].append(u)
        self._day_median[hour] = statistics.median(self._day[hour])
        if HOUR_OF_WEEK in self._profiles:
            self._week_median[dow * 24 + hour] = statistics.median(self._week[dow * 24 + hour])
        if DAY_OF_WEEK in self._profiles and (
            day != self._day_number or len(self._by_weekday[dow]) == _MIN_OFFSET
        ):
            self._day_number = day
            self._refit_offsets()
        self._stale += 1
        # The spreads move slowly; recomputing them every 8th point keeps a write cheap.
        if self._stale >= 8 or len(self._errors[POOLED]) < 64:
            self._stale = 0
            for profile in self._profiles:
                if profile == DAY_OF_WEEK:
                    continue
                errors = self._errors[profile]
                self._spreads[profile] = _spread(errors.values()) if len(errors) else 0.0

    def _forecasts(self, dow: int, hour: int) -> dict[str, float]:
        """Each allowed profile's forecast (level before the accepted shift), where it has one."""
        out: dict[str, float] = {}
        if len(self._pooled) >= self.rule.min_training:
            out[POOLED] = self._pooled_median
        allowed = self._profiles
        if HOUR_OF_DAY in allowed and len(self._day[hour]) >= _MIN_BUCKET:
            out[HOUR_OF_DAY] = self._day_median[hour]
            if DAY_OF_WEEK in allowed and len(self._by_weekday[dow]) >= _MIN_OFFSET:
                out[DAY_OF_WEEK] = out[HOUR_OF_DAY] + self._offset[dow]
        if HOUR_OF_WEEK in allowed and len(self._week[dow * 24 + hour]) >= _MIN_BUCKET:
            out[HOUR_OF_WEEK] = self._week_median[dow * 24 + hour]
        return out

    def _choose(self, forecasts: dict[str, float]) -> str | None:
        best: str | None = None
        for profile in self._profiles:  # coarse to fine
            if profile not in forecasts or len(self._errors[profile]) < self.rule.min_training:
                continue
            spread = self._spreads[profile]
            # Weekday offsets rest on a day's worth of points each: no handicap for them.
            margin = 1.0 if profile == DAY_OF_WEEK else _FINER
            if best is None or spread < margin * self._spreads[best]:
                best = profile
        return best

    # -- scoring ----------------------------------------------------------------------------

    def _band(
        self, at: float, dow: int, hour: int, forecasts: dict[str, float] | None = None
    ) -> tuple[str, float, float, float, float, float, float] | AnomalyScore:
        """(profile, centre, scale, expected, lower, upper, floor) for a load at ``at``, or why
        there is no verdict."""
        rule = self.rule
        have = len(self._pooled)
        if have < rule.min_training:
            return _none(f"not enough history: {have} of {rule.min_training} training points", have)
        spans = at - (self._first if self._first is not None else at)
        if len(self._profiles) > 1 and spans < rule.warmup_s:
            # Without a full week a weekend looks like a drop: learn the rhythm first.
            return _none(
                f"learning the table's rhythm: {spans / 86400:.1f} of "
                f"{rule.warmup_s / 86400:g} days of history",
                have,
            )
        if forecasts is None:
            forecasts = self._forecasts(dow, hour)
        profile = self._choose(forecasts)
        if profile is None:
            have = len(self._pooled)
            return _none(f"not enough history: {have} of {rule.min_training} training points", have)
        centre = forecasts[profile] + self._shift
        expected = math.expm1(centre)
        # Poisson noise of a count of n is about 1/sqrt(n) on the log scale.
        scale = max(self._spreads[profile], _MIN_SPREAD, 0.5 / math.sqrt(max(expected, 0.0) + 1))
        floor = max(rule.min_abs_change, rule.min_rel_change * abs(expected))
        low = min(math.expm1(centre - rule.threshold * scale), expected - floor)
        high = max(math.expm1(centre + rule.threshold * scale), expected + floor)
        return profile, centre, scale, expected, max(low, 0.0), high, floor

    def _score(
        self, at: float, rows: float, y: float, dow: int, hour: int, forecasts: dict[str, float]
    ) -> tuple[AnomalyScore, float, float]:
        band = self._band(at, dow, hour, forecasts)
        if isinstance(band, AnomalyScore):
            return band, 0.0, 0.0
        rule = self.rule
        profile, centre, scale, expected, low, high, floor = band
        lower = -math.inf if rule.direction == "spike" else low
        upper = math.inf if rule.direction == "drop" else high
        error = y - centre
        z = error / scale
        anomalous = not lower <= rows <= upper
        change = _change_text(rows - expected, expected)
        stats = f"log-scale z {z:+.1f}, threshold {rule.threshold:g}, {_where(profile, dow, hour)}"
        shown = _range_text(lower, upper)
        if anomalous:
            reason = f"{change} ({stats})"
        elif not low <= rows <= high:
            reason = (
                f"within expected range {shown}: {change} ignored (direction is {rule.direction})"
            )
        elif abs(z) > rule.threshold:
            reason = f"within expected range {shown}: {change} is under the floor of {_num(floor)}"
        else:
            reason = f"within expected range {shown} ({stats})"
        n = len(self._errors[profile])
        verdict = AnomalyScore(z, anomalous, expected, lower, upper, n, reason, profile)
        return verdict, error, z

    def expected_at(self, at: float) -> AnomalyScore:
        """The range a load at ``at`` would pass with, and the profile behind it (no score).

        Between writes the answer changes only where the local hour does (its profile bucket)
        and where the warm-up ends, so it is kept for that stretch of time: an idle table's
        poll is a comparison, not even a time-zone conversion.
        """
        cached = self._cached
        if cached is not None and cached[0] == self._version and cached[1] <= at < cached[2]:
            return cached[3]
        local = datetime.fromtimestamp(at, self._zone)
        dow, hour = local.weekday(), local.hour
        # Offsets change on the hour (or half hour) of local time, never inside one, so the
        # local hour ends 3600 s after it began even in zones offset by 30 or 45 minutes.
        start = at - (local.minute * 60 + local.second + local.microsecond / 1e6)
        until = start + 3600.0
        if self._first is not None:
            warm = self._first + self.rule.warmup_s
            start, until = (max(start, warm), until) if at >= warm else (start, min(until, warm))
        result = self._expected(at, dow, hour)
        self._cached = (self._version, start, until, result)
        return result

    def _expected(self, at: float, dow: int, hour: int) -> AnomalyScore:
        band = self._band(at, dow, hour)
        if isinstance(band, AnomalyScore):
            return band
        profile, _, _, expected, low, high, _ = band
        lower = -math.inf if self.rule.direction == "spike" else low
        upper = math.inf if self.rule.direction == "drop" else high
        reason = f"expected {_range_text(lower, upper)} ({_where(profile, dow, hour)})"
        n = len(self._errors[profile])
        return AnomalyScore(None, False, expected, lower, upper, n, reason, profile)


class FreshnessModel:
    """Gaps between one table's writes; the verdict is judged at any time without replaying."""

    def __init__(self, rule: AnomalyRule) -> None:
        self.rule = rule
        self._gaps = _Ring(_ERRORS_KEEP)
        self._last: float | None = None
        self._band: tuple[float, float, float] | None = None  # expected, scale, floor
        self._early: AnomalyScore | None = None
        self._added = 0
        # What a poll needs, fixed from one write to the next: the time since the last write
        # past which it is late, and the fixed parts of the verdict's wording (worded by the
        # first poll after a refit, so a write does not pay for text nobody may read).
        self._late_at = math.inf
        self._wording: tuple[str, str] | None = None  # the range, the expected gap
        self._waiting = _none("no write has been seen yet")  # the verdict without a band

    def add(self, at: float) -> None:
        if self._last is not None:
            gap = max(0.0, at - self._last)
            watch_early = self.rule.direction in ("early", "both")
            if watch_early and self._band is not None:
                self._early = self._judge_early(gap)
            self._gaps.add(gap)
            self._added += 1
            # The band moves slowly once there is a history: refit every 8th gap.
            if self._band is None or self._added % 8 == 0 or len(self._gaps) < 64:
                self._refit()
        self._last = at if self._last is None else max(self._last, at)
        if self._band is None:
            self._wait()

    def accept(self) -> bool:
        """Forget the old pace: a deliberate change of schedule is learnt from scratch."""
        had = len(self._gaps) > 0
        self._gaps.clear()
        self._early = None
        self._refit()  # no band: too few gaps
        if self._last is not None:
            self._wait()
        return had

    def _wait(self) -> None:
        n = len(self._gaps)
        reason = f"not enough history: {n} of {self.rule.min_training} gaps between writes"
        self._waiting = _none(reason, n)

    def _refit(self) -> None:
        n = len(self._gaps)
        if n < self.rule.min_training:
            self._band, self._late_at = None, math.inf
            return
        gaps = self._gaps.values()
        expected = _median(gaps)
        scale = max(_spread(gaps - expected), 0.01 * expected, 1.0)
        floor = max(self.rule.min_abs_change, self.rule.min_rel_change * expected)
        self._band = (expected, scale, floor)
        watch_late = self.rule.direction in ("late", "both")
        half = max(self.rule.threshold * scale, floor)
        self._late_at = expected + half if watch_late else math.inf
        self._wording = None

    def evaluate(self, now: float) -> tuple[float | None, AnomalyScore]:
        if self._last is None:
            return None, self._waiting
        current = max(0.0, now - self._last)
        band = self._band
        if band is None:
            return current, self._waiting
        late = current > self._late_at
        early = self._early
        if not late and early is not None and early.anomalous:
            return current, early
        # Everything but the time since the last write and its z is fixed until the next write
        # or until that time crosses _late_at: nothing is fitted here, only those two numbers.
        expected, scale, _ = band
        z = (current - expected) / scale
        wording = self._wording
        if wording is None:
            wording = self._wording = (
                _range_text(-math.inf, self._late_at),
                _num(round(expected)),
            )
        if late:
            reason = (
                f"late: time since the last write is {round(current)}s, expected about "
                f"{wording[1]}s (robust z {z:+.1f}, threshold {self.rule.threshold:g})"
            )
        else:
            reason = f"within expected range {wording[0]} (robust z {z:+.1f})"
        n = len(self._gaps)
        return current, AnomalyScore(z, late, expected, -math.inf, self._late_at, n, reason, POOLED)

    def _judge_early(self, gap: float) -> AnomalyScore:
        """The latest gap between writes against the band: too short is early. (The time since
        the last write is still growing, so only "too long" can be judged on it: evaluate.)"""
        assert self._band is not None
        expected, scale, floor = self._band
        rule = self.rule
        lower = expected - max(rule.threshold * scale, floor)
        z = (gap - expected) / scale
        anomalous = gap < lower
        n = len(self._gaps)
        if anomalous:
            reason = (
                f"early: the latest gap between writes is {_num(round(gap))}s, expected about "
                f"{_num(round(expected))}s (robust z {z:+.1f}, threshold {rule.threshold:g})"
            )
        else:
            reason = f"within expected range {_range_text(lower, math.inf)} (robust z {z:+.1f})"
        return AnomalyScore(z, anomalous, expected, lower, math.inf, n, reason, POOLED)


def _where(profile: str, dow: int, hour: int) -> str:
    if profile == POOLED:
        return "profile pooled"
    if profile == HOUR_OF_DAY:
        return f"profile hour of day, {hour:02d}:00"
    if profile == DAY_OF_WEEK:
        return f"profile hour of day and weekday, {_WEEKDAYS[dow]} {hour:02d}:00"
    return f"profile hour of week, {_WEEKDAYS[dow]} {hour:02d}:00"


def _none(reason: str, n: int = 0) -> AnomalyScore:
    return AnomalyScore(None, False, None, None, None, n, reason)
