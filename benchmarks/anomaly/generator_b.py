"""The independent benchmark set: same shape as :mod:`generator`, written separately.

Differences on purpose: noise is autocorrelated (AR(1) on the log scale) instead of independent,
the daily rhythm has two peaks (morning and afternoon) instead of one cosine, weekends differ
per series in depth, bursty loads are Poisson counts of a lognormal rate, the non-UTC tables are
in America/New_York and the period spans the November change, level shifts are x0.7 / x1.4 /
x0.5 / x1.8, and incidents are drawn hour by hour rather than as a count per series.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from benchmarks.anomaly.generator import DROP, KINDS, MISSING, SHIFT, SPIKE, Incident, Series

START = datetime(2025, 10, 6, tzinfo=UTC)
ZONES = ("America/New_York", "UTC")
TRAIN_HOURS = 14 * 24
INCIDENT_RATE = 3.5 / (46 * 24)  # per eligible hour: about 3.5 per series


def generate(n: int, seed: int, days: int = 60) -> list[Series]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = KINDS[(i * 3 + 1) % len(KINDS)]  # another order than the main set
        out.append(_series(i, kind, ZONES[i % 2], days, rng))
    return out


def _rhythm(kind: str, local: list[datetime], rng: np.random.Generator) -> np.ndarray:
    hours = np.array([t.hour + t.minute / 60 for t in local])
    if kind in ("steady", "bursty"):
        return np.zeros(len(local))
    morning, afternoon = rng.uniform(8, 10), rng.uniform(14, 17)
    depth = rng.uniform(1.0, 2.2)  # log-scale distance from the night trough to the peaks
    bumps = np.exp(-(((hours - morning) / 2.5) ** 2)) + 0.8 * np.exp(
        -(((hours - afternoon) / 3.0) ** 2)
    )
    pattern = depth * bumps
    if kind == "weekly":
        weekend = np.array([t.weekday() >= 5 for t in local])
        pattern = pattern - weekend * rng.uniform(0.4, 1.2)
    return pattern


def _series(i: int, kind: str, tz: str, days: int, rng: np.random.Generator) -> Series:
    hours = days * 24
    start = START + timedelta(hours=int(rng.integers(0, 168)))
    zone = ZoneInfo(tz)
    local = [(start + timedelta(hours=h)).astimezone(zone) for h in range(hours)]
    series = Series(f"b-{kind}-{i}", kind, tz, start, hours=hours)
    base = math.log(rng.uniform(80, 800) if kind == "bursty" else rng.uniform(800, 30_000))
    log_rate = base + _rhythm(kind, local, rng)
    sigma = 0.12 if kind == "bursty" else 0.04
    phi = 0.3
    noise = np.zeros(hours)
    for h in range(1, hours):
        noise[h] = phi * noise[h - 1] + rng.normal(0, sigma * math.sqrt(1 - phi * phi))
    log_rate = log_rate + noise
    missing = np.zeros(hours, dtype=bool)
    busy_until = TRAIN_HOURS
    if rng.random() < 0.35:
        at = int(rng.integers(TRAIN_HOURS + 168, hours - 168))
        f = float(rng.choice([0.7, 1.4, 0.5, 1.8]))
        log_rate[at:] += math.log(f)
        series.shift_at = at
        series.incidents.append(Incident(SHIFT, at, hours - at, f))
    for h in range(TRAIN_HOURS, hours - 4):
        if h < busy_until or rng.random() >= INCIDENT_RATE:
            continue
        if series.shift_at is not None and series.shift_at - 6 <= h < series.shift_at + 72:
            continue
        what = (DROP, SPIKE, MISSING)[int(rng.integers(0, 3))]
        length = 1 if what == MISSING else int(rng.integers(1, 4))
        if what == DROP:
            f = float(rng.uniform(0.1, 0.7))
            log_rate[h : h + length] += math.log(f)
        elif what == SPIKE:
            f = float(rng.uniform(2, 10))
            log_rate[h : h + length] += math.log(f)
        else:
            f = 0.0
            missing[h] = True
        series.incidents.append(Incident(what, h, length, f))
        busy_until = h + length + 4
    rows = rng.poisson(np.exp(log_rate))
    t0 = start.timestamp()
    for h in range(hours):
        if missing[h]:
            continue
        series.write_times.append(t0 + h * 3600 + float(rng.uniform(30, 420)))
        series.write_rows.append(int(rows[h]))
        series.write_hour.append(h)
    return series
