"""Anomaly scores on seeded synthetic volume and freshness series."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from lakewarden.signals.anomaly import (
    AnomalyRule,
    AnomalyScore,
    Direction,
    score,
    score_series,
)

START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday, so weekdays line up with the pattern


def hourly_loads(days: int, *, seed: int, weekly: bool = True, daily: bool = True) -> np.ndarray:
    """~10,000 rows/hour times a daily and weekly rhythm, with 5% multiplicative noise."""
    rng = np.random.default_rng(seed)
    hours = np.arange(days * 24)
    level = np.full(hours.size, 10_000.0)
    if daily:
        level *= 1 + 0.3 * np.sin(2 * np.pi * (hours % 24 - 6) / 24)
    if weekly:
        level *= np.where((hours // 24) % 7 >= 5, 0.6, 1.0)  # quiet weekends
    return np.round(level * (1 + rng.normal(0, 0.05, hours.size)))


def hourly_times(n: int) -> list[datetime]:
    return [START + timedelta(hours=i) for i in range(n)]


def score_at(values: np.ndarray, i: int, rule: AnomalyRule, value: float) -> AnomalyScore:
    """Score `value` as if observed at position i, trained on everything before it."""
    times = hourly_times(len(values))
    return score(values[:i].tolist(), value, rule, at=times[i], history_times=times[:i])


def false_positive_rate(values: np.ndarray, rule: AnomalyRule) -> tuple[float, int, float]:
    """Share of flagged points among those with a verdict, their count, and the seconds it took."""
    times = hourly_times(len(values))
    started = time.perf_counter()
    frame = score_series(values, rule, times)
    elapsed = time.perf_counter() - started
    scored = frame.filter(pl.col("score").is_not_null())
    flagged = scored.filter(pl.col("anomalous")).height
    return flagged / max(scored.height, 1), scored.height, elapsed


# 30 days of hourly loads; a point in the last week has 4 same-hour-of-week predecessors.
LOAD_CASES = [
    # (id, injected value, direction, expected verdict)
    ("drop-flagged-by-drop", 12, "drop", True),
    ("drop-flagged-by-both", 12, "both", True),
    ("drop-ignored-by-spike", 12, "spike", False),
    ("spike-flagged-by-both", 40_000, "both", True),
    ("spike-flagged-by-spike", 40_000, "spike", True),
    ("spike-ignored-by-drop", 40_000, "drop", False),
]


@pytest.mark.parametrize(
    ("injected", "direction", "flagged"),
    [case[1:] for case in LOAD_CASES],
    ids=[case[0] for case in LOAD_CASES],
)
def test_injected_volume_change(injected: float, direction: Direction, flagged: bool) -> None:
    loads = hourly_loads(30, seed=7)
    i = 29 * 24 + 14  # Tuesday of week 5, 14:00
    rule = AnomalyRule(min_training=4, seasonality="hour_of_week", direction=direction)

    result = score_at(loads, i, rule, injected)

    assert result.anomalous is flagged
    assert result.training_size == 4
    assert result.expected is not None and 8_000 < result.expected < 14_000
    assert result.score is not None and (result.score < -4 if injected < 1000 else result.score > 4)
    if flagged:
        change = "drop of 99.9% below" if injected < 1000 else "spike of"
        assert result.reason.startswith(change)
        assert "expected" in result.reason and "threshold 4" in result.reason
    else:
        assert f"ignored (direction is {direction})" in result.reason
    # The real observation at the same point is not flagged.
    assert not score_at(loads, i, rule, float(loads[i])).anomalous


def test_drop_reason_reads_as_a_sentence() -> None:
    history = [10_000.0, 10_100.0, 9_900.0, 10_050.0, 9_950.0] * 4
    result = score(history, 12, AnomalyRule(direction="drop"))
    assert result.reason.startswith("drop of 99.9% below expected 10000")
    assert result.lower is not None and result.upper == math.inf  # spikes are not watched


@pytest.mark.parametrize(
    ("gap_s", "flagged"),
    [(5 * 3600, True), (2 * 3600, True), (3600 + 90, False)],
    ids=["5h-gap", "2h-gap", "normal-jitter"],
)
def test_freshness_delay(gap_s: float, flagged: bool) -> None:
    rng = np.random.default_rng(11)
    intervals = 3600 + rng.normal(0, 60, 30 * 24)  # seconds between updates, ~1 min jitter
    rule = AnomalyRule(direction="spike", min_abs_change=600)  # late by 10 min or more matters

    result = score(intervals.tolist(), gap_s, rule)

    assert result.anomalous is flagged
    assert result.expected is not None and abs(result.expected - 3600) < 30
    if flagged:
        assert result.score is not None and result.score > rule.threshold


FPR_CASES = [
    # (id, weekly pattern in the data, rule)
    ("weekly-hour_of_week", True, AnomalyRule(min_training=4, seasonality="hour_of_week")),
    ("flat-none", False, AnomalyRule()),
]


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(
    ("weekly", "rule"), [case[1:] for case in FPR_CASES], ids=[case[0] for case in FPR_CASES]
)
def test_false_positive_rate_on_clean_60_days(weekly: bool, rule: AnomalyRule, seed: int) -> None:
    # "none" gets a series without a weekly rhythm (and no daily one: the tightest band).
    loads = hourly_loads(60, seed=seed, weekly=weekly, daily=weekly)

    rate, scored, elapsed = false_positive_rate(loads, rule)

    print(
        f"seasonality={rule.seasonality} seed={seed}: FPR {rate:.3%} over {scored} points"
        f" (score_series on {len(loads)} points: {elapsed:.3f}s)"
    )
    assert scored >= 24 * 7 * 4  # every point past the training minimum got a verdict
    assert rate <= 0.01


def test_weekly_pattern_without_seasonality_misses_a_weekday_drop() -> None:
    # Why hour_of_week exists: a weekday dropping to weekend level hides in a pooled history.
    loads = hourly_loads(60, seed=5)
    i = 58 * 24 + 12  # Tuesday noon
    half = float(loads[i]) * 0.55
    assert not score(loads[:i].tolist(), half, AnomalyRule()).anomalous
    seasonal = AnomalyRule(min_training=4, seasonality="hour_of_week", direction="drop")
    assert score_at(loads, i, seasonal, half).anomalous


@pytest.mark.parametrize(
    ("rule", "history_len", "at_hour", "counts"),
    [
        (AnomalyRule(), 5, None, "5 of 14"),
        (AnomalyRule(), 13, None, "13 of 14"),
        (AnomalyRule(min_training=3), 0, None, "0 of 3"),
        (AnomalyRule(min_training=5, seasonality="hour_of_week"), 4 * 168, 4 * 168, "4 of 5"),
    ],
    ids=["5-of-14", "13-of-14", "empty", "hour_of_week-bucket"],
)
def test_not_enough_history(
    rule: AnomalyRule, history_len: int, at_hour: int | None, counts: str
) -> None:
    history = [10_000.0] * history_len
    times = hourly_times(history_len + 1)
    kwargs = {"at": times[at_hour], "history_times": times[:-1]} if at_hour is not None else {}

    result = score(history, 12, rule, **kwargs)  # type: ignore[arg-type]

    assert result.score is None and not result.anomalous
    assert result.expected is result.lower is result.upper is None
    assert "not enough history" in result.reason
    assert f"{counts} training points" in result.reason
    if rule.seasonality == "hour_of_week":
        assert "for Mon 00:00 (hour of week)" in result.reason


def test_missing_values_are_not_training_points() -> None:
    history: list[float | None] = [*([100.0] * 13), None, math.nan]
    assert score(history, 100.0, AnomalyRule()).training_size == 13
    assert score(history, 100.0, AnomalyRule()).score is None


FLOOR_CASES = [
    # (id, rule, value on a flat 1000 history, flagged, expected range)
    ("tiny-change-no-floor", AnomalyRule(), 1003, False, (960, 1040)),
    ("big-change-no-floor", AnomalyRule(), 1100, True, (960, 1040)),
    ("z-over-threshold-under-abs", AnomalyRule(min_abs_change=50), 1045, False, (950, 1050)),
    ("over-abs-floor", AnomalyRule(min_abs_change=50), 1051, True, (950, 1050)),
    ("under-rel-floor", AnomalyRule(min_rel_change=0.1), 920, False, (900, 1100)),
    ("over-rel-floor", AnomalyRule(min_rel_change=0.1), 850, True, (900, 1100)),
    (
        "both-floors-larger-wins",
        AnomalyRule(min_abs_change=50, min_rel_change=0.1),
        1080,
        False,
        (900, 1100),
    ),
]


@pytest.mark.parametrize(
    ("rule", "value", "flagged", "band"),
    [case[1:] for case in FLOOR_CASES],
    ids=[case[0] for case in FLOOR_CASES],
)
def test_floors_on_flat_history(
    rule: AnomalyRule, value: float, flagged: bool, band: tuple[float, float]
) -> None:
    result = score([1000.0] * 20, value, rule)
    assert result.anomalous is flagged
    assert (result.lower, result.upper) == pytest.approx(band)
    assert result.score is not None and math.isfinite(result.score)
    if not flagged:
        assert result.reason.startswith("within expected range")
    if not flagged and abs(result.score) > rule.threshold:
        assert "is under the floor of" in result.reason


def test_flat_zero_history_uses_floor_as_unit() -> None:
    rule = AnomalyRule(min_abs_change=5)
    assert not score([0.0] * 20, 3, rule).anomalous
    result = score([0.0] * 20, 30, rule)
    assert result.anomalous and result.reason.startswith("spike of 30 above expected 0")


def test_current_point_is_not_in_its_own_training_set() -> None:
    history = [100.0] * 20
    result = score(history, 1_000_000, AnomalyRule())
    assert result.anomalous and result.training_size == 20
    # Had the point joined its training set, a mean/stddev z could not exceed (n - 1) / sqrt(n).
    n = len(history) + 1
    assert result.score is not None and result.score > 1000 * (n - 1) / math.sqrt(n)


def test_score_series_is_an_expanding_window_excluding_the_current_point() -> None:
    loads = hourly_loads(20, seed=3, weekly=False, daily=False)
    loads[400] = 12  # an incident inside the history
    rule = AnomalyRule()

    frame = score_series(loads, rule)

    assert frame.columns == [
        "value",
        "expected",
        "lower",
        "upper",
        "score",
        "anomalous",
        "training_size",
        "reason",
    ]
    assert frame["training_size"].to_list() == list(range(len(loads)))
    assert frame["score"][: rule.min_training].is_null().all()
    assert frame["anomalous"][400]
    for i in (14, 200, 400, 401, len(loads) - 1):
        single = score(loads[:i].tolist(), float(loads[i]), rule)
        row = frame.row(i, named=True)
        assert row["score"] == pytest.approx(single.score)
        assert (row["lower"], row["upper"]) == pytest.approx((single.lower, single.upper))
        assert row["reason"] == single.reason


def test_score_series_with_seasonality_matches_single_scores() -> None:
    loads = hourly_loads(35, seed=4)
    times = hourly_times(len(loads))
    rule = AnomalyRule(min_training=4, seasonality="hour_of_week")

    frame = score_series(pl.Series(loads), rule, pl.Series(times))

    assert frame.columns[0] == "time" and frame["time"].to_list() == times
    for i in (4 * 168, 4 * 168 + 37, len(loads) - 1):
        single = score(
            loads[:i].tolist(), float(loads[i]), rule, at=times[i], history_times=times[:i]
        )
        assert frame["score"][i] == pytest.approx(single.score)
        assert frame["training_size"][i] == single.training_size == 4


def test_hour_of_week_needs_times() -> None:
    rule = AnomalyRule(seasonality="hour_of_week")
    with pytest.raises(ValueError, match="times"):
        score([1.0] * 20, 1.0, rule, at=START)
    with pytest.raises(ValueError, match="at="):
        score([1.0] * 20, 1.0, rule, history_times=hourly_times(20))
    with pytest.raises(ValueError, match="aligned"):
        score([1.0] * 20, 1.0, rule, at=START, history_times=hourly_times(19))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_training": 2},
        {"min_training": 0},
        {"threshold": 0},
        {"threshold": -1.0},
        {"threshold": math.nan},
        {"direction": "up"},
        {"seasonality": "daily"},
        {"min_abs_change": -1},
        {"min_rel_change": math.inf},
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_rule_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AnomalyRule(**kwargs)  # type: ignore[arg-type]


def test_rule_minimum_is_accepted() -> None:
    assert AnomalyRule(min_training=3, threshold=0.5).min_training == 3
