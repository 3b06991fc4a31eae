"""Robust one-shot anomaly scores of a value against a history, and the rule both scorers share.

:func:`score` and :func:`score_series` judge a value against a plain history (a pooled band, or
hour-of-week buckets on the datetimes given). The server's per-table models, which learn write by
write, find the seasonal profile themselves and work on the log scale, are in
:mod:`lakewarden.signals.detector`; :class:`AnomalyRule` configures both.

Method, and why:

- Robust z: ``(value - median) / scale`` with ``scale = 1.4826 * MAD`` (median absolute deviation),
  which estimates the standard deviation of normal noise. Median and MAD ignore up to half of the
  history being odd, so past incidents (a failed load, a backfill) do not widen the band and hide
  the next one, which is what a mean/stddev band does.
- The current point is never in its own training set. Included, it drags the centre towards itself
  and inflates the spread, which caps |z| on short histories (with mean/stddev the cap is
  ``(n - 1) / sqrt(n)``, so a 14-point history can never reach z = 4).
- Small histories are honest: the MAD gets its finite-sample correction (Croux & Rousseeuw) and the
  scale is widened by the uncertainty of the median itself (``sqrt(1 + pi / 2n)``), so the band is a
  prediction band for a new point rather than a description of the old ones.
- ``min_training`` is enforced: fewer usable (finite) training points give no verdict (``score``
  None) and the reason says how many there are, instead of a confident score from three points.
- Floors: ``min_abs_change`` and ``min_rel_change`` say which changes matter at all. A deviation
  below either floor is never anomalous, whatever its z; on a very steady table a change of 0.5% can
  be many MADs away and still not worth a page.
- Flat history: a MAD of 0 would make any change infinitely surprising, so noise is never assumed
  to be below 1% of the level (with a level of 0 the floors, else one unit, set the scale). Floors
  still decide the verdict.
- Seasonality ``hour_of_week``: the expected value is the median of the history points in the same
  hour of week as the current one, and ``min_training`` counts those points. With hourly data a
  bucket gains one point per week, too few to estimate noise from, so the scale is also taken from
  the errors this same forecast made on every earlier point (relative to its forecast, i.e.
  multiplicative noise as in load volumes); the larger of the two scales wins.

Pure Python, numpy and Polars: no I/O. ``history`` is oldest-first.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
import polars as pl

Direction = Literal["both", "drop", "spike", "late", "early"]
Seasonality = Literal["auto", "none", "hour_of_day", "hour_of_week"]
Floats = Sequence[float | None] | npt.NDArray[np.float64] | pl.Series
Times = Sequence[datetime] | pl.Series

_DIRECTIONS = ("both", "drop", "spike", "late", "early")
_SEASONALITIES = ("auto", "none", "hour_of_day", "hour_of_week")
_MAD_TO_SIGMA = 1.4826
# Croux & Rousseeuw (1992): the MAD underestimates sigma on small samples; n / (n - 0.8) from 10 on.
_MAD_SMALL_N = {3: 1.495, 4: 1.363, 5: 1.206, 6: 1.200, 7: 1.140, 8: 1.129, 9: 1.107}
# Noise is assumed to be at least 1% of the level, so a flat history (MAD 0) does not make every
# tiny change infinitely surprising.
_MIN_REL_NOISE = 0.01
# Volumes are rows and freshness is seconds: one unit is their resolution.
_UNIT = 1.0
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class AnomalyRule:
    min_training: int = 14
    threshold: float = 4.0
    direction: Direction = "both"
    min_abs_change: float = 0.0
    min_rel_change: float = 0.0
    seasonality: Seasonality = "none"
    timezone: str = "UTC"  # IANA name: seasonal profiles follow this wall clock
    settle_s: float = 86400.0  # a change lasting this long becomes the new normal
    warmup_s: float = 7 * 86400.0  # no volume verdict before the history spans this long

    def __post_init__(self) -> None:
        # A median and MAD of fewer than 3 points describe the points, not their distribution.
        if isinstance(self.min_training, bool) or not isinstance(self.min_training, int):
            raise ValueError(f"min_training must be an integer, got {self.min_training!r}")
        if self.min_training < 3:
            raise ValueError(f"min_training must be at least 3, got {self.min_training}")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {self.threshold!r}")
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {self.direction!r}")
        if self.seasonality not in _SEASONALITIES:
            raise ValueError(
                f"seasonality must be one of {_SEASONALITIES}, got {self.seasonality!r}"
            )
        for name in ("min_abs_change", "min_rel_change", "settle_s", "warmup_s"):
            floor = getattr(self, name)
            if not (math.isfinite(floor) and floor >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {floor!r}")
        try:
            ZoneInfo(self.timezone)
        except (ValueError, ZoneInfoNotFoundError) as exc:
            raise ValueError(
                f"timezone must be an IANA time zone name, got {self.timezone!r}"
            ) from exc


@dataclass(frozen=True)
class AnomalyScore:
    score: float | None  # signed robust z, negative = below expected; None = no verdict
    anomalous: bool
    expected: float | None
    lower: float | None  # [lower, upper] = values that would not be flagged (+-inf: unwatched side)
    upper: float | None
    training_size: int
    reason: str
    profile: str | None = None  # the seasonal profile the expected value came from


def score(
    history: Floats,
    value: float,
    rule: AnomalyRule,
    *,
    at: datetime | None = None,
    history_times: Times | None = None,
) -> AnomalyScore:
    """Score ``value`` against ``history`` (oldest first, never including ``value`` itself)."""
    past = _as_floats(history)
    times = _check_times(rule, len(past), history_times)
    if rule.seasonality == "hour_of_week" and at is None:
        raise ValueError("seasonality 'hour_of_week' needs at= (the time of the scored value)")
    state = _History(rule, capacity=len(past))
    for i, point in enumerate(past):
        state.add(float(point), times[i] if times else None)
    return state.evaluate(value, at)


def score_series(values: Floats, rule: AnomalyRule, times: Times | None = None) -> pl.DataFrame:
    """Score every point against all points before it (expanding window, current excluded).

    One row per point: ``time`` (when times are given), value, expected, lower, upper, score,
    anomalous, training_size, reason.
    """
    points = _as_floats(values)
    stamps = _check_times(rule, len(points), times)
    state = _History(rule, capacity=len(points))
    results: list[AnomalyScore] = []
    for i, point in enumerate(points):
        at = stamps[i] if stamps else None
        results.append(state.evaluate(float(point), at))
        state.add(float(point), at)
    columns: dict[str, pl.Series] = {}
    if stamps:
        columns["time"] = pl.Series("time", stamps)
    columns["value"] = pl.Series("value", points, dtype=pl.Float64)
    for name in ("expected", "lower", "upper", "score"):
        columns[name] = pl.Series(name, [getattr(r, name) for r in results], dtype=pl.Float64)
    columns["anomalous"] = pl.Series("anomalous", [r.anomalous for r in results], dtype=pl.Boolean)
    sizes = [r.training_size for r in results]
    columns["training_size"] = pl.Series("training_size", sizes, dtype=pl.Int64)
    columns["reason"] = pl.Series("reason", [r.reason for r in results], dtype=pl.String)
    return pl.DataFrame(columns)


class _Buffer:
    """Append-only float array; avoids rebuilding an array from a list for every scored point."""

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(capacity, 8), dtype=np.float64)
        self._size = 0

    def append(self, value: float) -> None:
        if self._size == self._data.size:
            self._data = np.concatenate([self._data, np.empty_like(self._data)])
        self._data[self._size] = value
        self._size += 1

    def view(self) -> npt.NDArray[np.float64]:
        return self._data[: self._size]


class _History:
    """Training state fed oldest-first, so batch scoring never re-reads the past."""

    def __init__(self, rule: AnomalyRule, capacity: int) -> None:
        self.rule = rule
        self.all = _Buffer(capacity)
        self.buckets: dict[int, list[float]] = {}
        self.errors = _Buffer(capacity)  # relative errors of past same-hour-of-week forecasts

    def add(self, value: float, at: datetime | None) -> None:
        if not math.isfinite(value):
            return  # missing observations are not training points
        if self.rule.seasonality != "hour_of_week":
            self.all.append(value)
            return
        bucket = self.buckets.setdefault(_hour_of_week(_need_time(at)), [])
        if bucket:
            # statistics.median: buckets are small and np.median costs ~20us of overhead per call.
            forecast = statistics.median(bucket)
            if forecast != 0:
                self.errors.append((value - forecast) / abs(forecast))
        bucket.append(value)

    def evaluate(self, value: float, at: datetime | None) -> AnomalyScore:
        if self.rule.seasonality != "hour_of_week":
            return _verdict(self.all.view(), value, self.rule, pooled_rel_scale=0.0, where="")
        slot = _hour_of_week(_need_time(at))
        training = np.asarray(self.buckets.get(slot, []), dtype=np.float64)
        where = f" for {_WEEKDAYS[slot // 24]} {slot % 24:02d}:00 (hour of week)"
        # The pooled scale costs two medians over the whole history: only pay for it on a verdict.
        enough = training.size >= self.rule.min_training
        pooled = _robust_sigma(self.errors.view()) if enough else 0.0
        return _verdict(training, value, self.rule, pooled, where)


def _verdict(
    training: npt.NDArray[np.float64],
    value: float,
    rule: AnomalyRule,
    pooled_rel_scale: float,
    where: str,
) -> AnomalyScore:
    n = int(training.size)
    if n < rule.min_training:
        reason = f"not enough history{where}: {n} of {rule.min_training} training points"
        return AnomalyScore(None, False, None, None, None, n, reason)
    if not math.isfinite(value):
        return AnomalyScore(None, False, None, None, None, n, "value is missing or not finite")

    expected = _median(training)
    level = abs(expected)
    scale = max(
        _robust_sigma(training) * _small_sample_factor(n),
        pooled_rel_scale * level,
        _MIN_REL_NOISE * level,
    )
    floor = max(rule.min_abs_change, rule.min_rel_change * level)
    if scale == 0.0:  # flat history at level 0: let the floors set the unit of surprise
        scale = floor / rule.threshold if floor > 0 else _UNIT
    half_width = max(rule.threshold * scale, floor)
    lower = -math.inf if rule.direction == "spike" else expected - half_width
    upper = math.inf if rule.direction == "drop" else expected + half_width

    deviation = value - expected
    z = deviation / scale
    anomalous = not lower <= value <= upper
    band = _range_text(lower, upper)
    change = _change_text(deviation, expected)
    stats = f"robust z {z:+.1f}, threshold {rule.threshold:g}"
    if anomalous:
        reason = f"{change} ({stats})"
    elif abs(deviation) > half_width:
        reason = f"within expected range {band}: {change} ignored (direction is {rule.direction})"
    elif abs(z) > rule.threshold:
        reason = f"within expected range {band}: {change} is under the floor of {_num(floor)}"
    else:
        reason = f"within expected range {band} ({stats})"
    return AnomalyScore(z, anomalous, expected, lower, upper, n, reason)


def _robust_sigma(points: npt.NDArray[np.float64]) -> float:
    if points.size == 0:
        return 0.0
    return _MAD_TO_SIGMA * _median(np.abs(points - _median(points)))


def _median(points: npt.NDArray[np.float64]) -> float:
    # np.partition directly: np.median's generic machinery is 5x slower on these small arrays.
    mid = points.size // 2
    if points.size % 2:
        return float(np.partition(points, mid)[mid])
    low, high = np.partition(points, (mid - 1, mid))[mid - 1 : mid + 1]
    return 0.5 * (float(low) + float(high))


def _small_sample_factor(n: int) -> float:
    # MAD bias correction times the prediction widening for a median estimated from n points.
    bias = _MAD_SMALL_N.get(n, n / (n - 0.8))
    return bias * math.sqrt(1.0 + math.pi / (2.0 * n))


def _hour_of_week(at: datetime) -> int:
    # Local to the datetime given: business rhythms follow the wall clock of the data's owner.
    return at.weekday() * 24 + at.hour


def _need_time(at: datetime | None) -> datetime:
    if not isinstance(at, datetime):
        raise ValueError(f"seasonality 'hour_of_week' needs a datetime for every point, got {at!r}")
    return at


def _as_floats(values: Floats) -> npt.NDArray[np.float64]:
    if isinstance(values, pl.Series):
        return values.cast(pl.Float64).fill_null(float("nan")).to_numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)  # None -> nan


def _check_times(rule: AnomalyRule, n: int, times: Times | None) -> list[datetime] | None:
    if times is None:
        if rule.seasonality == "hour_of_week":
            raise ValueError("seasonality 'hour_of_week' needs the times of the history points")
        return None
    stamps = times.to_list() if isinstance(times, pl.Series) else list(times)
    if len(stamps) != n:
        raise ValueError(f"got {len(stamps)} times for {n} values; they must be aligned")
    return stamps


def _num(x: float) -> str:
    x = float(x)  # rule floors may be ints, which lack is_integer() before Python 3.12
    if math.isfinite(x) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6g}"


def _range_text(lower: float, upper: float) -> str:
    if math.isinf(lower):
        return f"at most {_num(upper)}"
    if math.isinf(upper):
        return f"at least {_num(lower)}"
    return f"{_num(lower)} to {_num(upper)}"


def _change_text(deviation: float, expected: float) -> str:
    kind, side = ("drop", "below") if deviation < 0 else ("spike", "above")
    if expected == 0:
        return f"{kind} of {_num(abs(deviation))} {side} expected 0"
    pct = abs(deviation) / abs(expected) * 100
    amount = f"{pct:.0f}%" if pct >= 100 else f"{pct:.3g}%"
    return f"{kind} of {amount} {side} expected {_num(expected)}"
