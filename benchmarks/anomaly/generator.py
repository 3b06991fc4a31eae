"""Synthetic hourly load series with injected incidents (the main benchmark set).

Four kinds: steady, daily rhythm, weekly rhythm (daily x quiet weekends), bursty (small loads,
heavy multiplicative noise). Each series has one load per hour a few minutes past the hour; the
rhythm follows the table's wall clock (``tz``), so a non-UTC table crosses daylight-saving changes.
Incidents start after the 14-day training period: drops of 30-90% and spikes x2-x10 lasting 1-3
hours, missing loads, and at most one permanent level shift (x0.6 or x1.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

KINDS = ("steady", "daily", "weekly", "bursty")
TRAIN_DAYS = 14
DROP, SPIKE, MISSING, SHIFT = "drop", "spike", "missing", "level_shift"


@dataclass
class Incident:
    kind: str
    start: int  # hour index
    hours: int
    factor: float


@dataclass
class Series:
    name: str
    kind: str
    tz: str
    start: datetime  # UTC, first hour
    write_times: list[float] = field(default_factory=list)  # epoch seconds
    write_rows: list[int] = field(default_factory=list)
    write_hour: list[int] = field(default_factory=list)  # hour index of each write
    hours: int = 0
    incidents: list[Incident] = field(default_factory=list)
    shift_at: int | None = None  # hour index of a level shift


@dataclass(frozen=True)
class Shape:
    """Generator parameters; the independent set uses other values."""

    days: int = 60
    steady_level: tuple[float, float] = (500, 20_000)
    rhythm_level: tuple[float, float] = (1_000, 20_000)
    daily_amplitude: tuple[float, float] = (0.5, 0.9)
    weekend_factor: tuple[float, float] = (0.3, 0.6)
    noise: float = 0.05  # lognormal sigma of steady/daily/weekly loads
    bursty_level: tuple[float, float] = (40, 400)
    bursty_shape: float = 60.0  # gamma shape of bursty noise (cv = 1/sqrt(shape))
    incidents_per_series: float = 3.7
    shift_probability: float = 0.3
    zones: tuple[str, ...] = ("UTC", "Europe/Berlin")
    start: datetime = datetime(2025, 2, 3, tzinfo=UTC)  # spans the March DST change


def generate(n: int, seed: int, shape: Shape = Shape()) -> list[Series]:
    rng = np.random.default_rng(seed)
    return [_one(i, KINDS[i % len(KINDS)], rng, shape) for i in range(n)]


def _one(i: int, kind: str, rng: np.random.Generator, shape: Shape) -> Series:
    tz = shape.zones[i // len(KINDS) % len(shape.zones)]
    zone = ZoneInfo(tz)
    hours = shape.days * 24
    start = shape.start + timedelta(hours=int(rng.integers(0, 24 * 7)))
    series = Series(f"{kind}-{i}", kind, tz, start, hours=hours)
    locals_ = [(start + timedelta(hours=h)).astimezone(zone) for h in range(hours)]
    hod = np.array([t.hour + t.minute / 60 for t in locals_])
    dow = np.array([t.weekday() for t in locals_])
    if kind == "bursty":
        level = rng.uniform(*shape.bursty_level) * np.ones(hours)
    elif kind == "steady":
        level = rng.uniform(*shape.steady_level) * np.ones(hours)
    else:
        base = rng.uniform(*shape.rhythm_level)
        amp = rng.uniform(*shape.daily_amplitude)
        peak = rng.uniform(10, 16)
        level = base * (1 + amp * np.cos(2 * math.pi * (hod - peak) / 24))
        if kind == "weekly":
            level = level * np.where(dow >= 5, rng.uniform(*shape.weekend_factor), 1.0)
    if kind == "bursty":
        noise = rng.gamma(shape.bursty_shape, 1 / shape.bursty_shape, hours)
    else:
        noise = rng.lognormal(0, shape.noise, hours)
    factor = np.ones(hours)
    present = np.ones(hours, dtype=bool)
    first = TRAIN_DAYS * 24
    if rng.random() < shape.shift_probability:
        at = int(rng.integers(first + 24 * 7, hours - 24 * 7))
        f = 1.5 if rng.random() < 0.5 else 0.6
        factor[at:] *= f
        series.shift_at = at
        series.incidents.append(Incident(SHIFT, at, hours - at, f))
    count = rng.poisson(shape.incidents_per_series)
    taken = np.zeros(hours, dtype=bool)
    if series.shift_at is not None:
        taken[series.shift_at - 6 : series.shift_at + 72] = True  # keep the shift readable
    for _ in range(count):
        what = rng.choice([DROP, SPIKE, MISSING])
        length = 1 if what == MISSING else int(rng.integers(1, 4))
        for _attempt in range(20):
            at = int(rng.integers(first, hours - length - 2))
            if not taken[at - 3 : at + length + 3].any():
                break
        else:
            continue
        taken[at - 3 : at + length + 3] = True
        if what == DROP:
            f = 1 - rng.uniform(0.3, 0.9)
            factor[at : at + length] *= f
        elif what == SPIKE:
            f = rng.uniform(2, 10)
            factor[at : at + length] *= f
        else:
            f = 0.0
            present[at] = False
        series.incidents.append(Incident(str(what), at, length, float(f)))
    expected = level * noise * factor
    rows = rng.poisson(np.maximum(expected, 0))
    epoch0 = start.timestamp()
    for h in range(hours):
        if not present[h]:
            continue
        series.write_times.append(epoch0 + h * 3600 + float(rng.uniform(60, 300)))
        series.write_rows.append(int(rows[h]))
        series.write_hour.append(h)
    return series
