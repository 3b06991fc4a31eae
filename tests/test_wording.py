"""Quantities as people read them: the same words on every path (CLI, REST, check details)."""

from __future__ import annotations

import math

import pytest

from lakewarden import wording


@pytest.mark.parametrize(
    ("count", "noun", "expected"),
    [
        (0, "row", "0 rows"),
        (1, "row", "1 row"),
        (2, "NULL value", "2 NULL values"),
        (1000, "table contract", "1,000 table contracts"),
    ],
    ids=["zero", "one", "two", "thousands"],
)
def test_plural(count: int, noun: str, expected: str) -> None:
    assert wording.plural(count, noun) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0 s"),
        (45, "45 s"),
        (90, "1.5 min"),
        (4377.9, "1.2 h"),
        (3600, "1 h"),
        (86400 * 3, "3 d"),
        (math.inf, "∞"),
    ],
    ids=["zero", "seconds", "minutes", "hours", "round-hour", "days", "infinite"],
)
def test_duration(seconds: float, expected: str) -> None:
    assert wording.duration(seconds) == expected


@pytest.mark.parametrize(
    ("lower", "upper", "unit", "expected"),
    [
        (-math.inf, 4377.9, "s", "≤ 1.2 h"),  # was printed as [-inf, 4377.9...]
        (None, 0.05, "ratio", "≤ 5%"),
        (12, 4000, "rows", "between 12 rows and 4,000 rows"),
        (-3.5, 40, "rows", "≤ 40 rows"),  # no negative row counts
        (10, math.inf, "rows", "≥ 10 rows"),
        (None, None, "rows", "any"),
    ],
    ids=["upper-only-time", "ratio", "range", "negative-floor-dropped", "lower-only", "none"],
)
def test_expected_range(lower: float | None, upper: float | None, unit: str, expected: str) -> None:
    assert wording.expected_range(lower, upper, unit) == expected
