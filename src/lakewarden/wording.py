"""How lakewarden says quantities to people: counts with their nouns, durations, ratios, ranges.

Used wherever a sentence or a limit is shown (check details, CLI tables, error messages), so the
CLI prints the same text whether it opened the lake or asked a server.
"""

from __future__ import annotations

import functools
import math


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 row``, ``2 rows``, ``1,000 NULL values``: the count with the noun it agrees with."""
    word = noun if count == 1 else (plural_form or noun + "s")
    return f"{count:,} {word}"


def duration(seconds: float) -> str:
    """``45 s``, ``1.2 h``, ``3 d``: one unit, at most one decimal, no trailing ``.0``."""
    if not math.isfinite(seconds):
        return "∞" if seconds > 0 else "-∞"
    sign = "-" if seconds < 0 else ""
    value = abs(seconds)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if value >= size:
            return f"{sign}{_number(value / size)} {unit}"
    return f"{sign}{_number(value)} s"


def ratio(value: float) -> str:
    """A ratio 0..1 as a percentage: ``5%``, ``0.25%``."""
    return f"{_number(value * 100, 2)}%"


def quantity(value: float, unit: str) -> str:
    """A number in a unit: ``s`` reads as a duration, ``ratio`` as a percentage."""
    if unit == "s":
        return duration(value)
    if unit == "ratio":
        return ratio(value)
    text = f"{value:,.0f}" if float(value).is_integer() else _number(value, 2)
    return f"{text} {unit}".rstrip()


# Every poll words every table's expected range, and an idle table's bounds do not move.
@functools.lru_cache(maxsize=4096)
def expected_range(lower: float | None, upper: float | None, unit: str) -> str:
    """``between 2 and 40 rows``, ``≤ 1.2 h``, ``≥ 10 rows``; infinite or missing bounds drop."""
    low = lower if lower is not None and math.isfinite(lower) else None
    high = upper if upper is not None and math.isfinite(upper) else None
    if unit in ("s", "rows", "ratio") and low is not None and low <= 0:
        low = None  # nothing is below zero of these: "≤ x" says the same with less noise
    if low is not None and high is not None:
        return f"between {quantity(low, unit)} and {quantity(high, unit)}"
    if high is not None:
        return f"≤ {quantity(high, unit)}"
    if low is not None:
        return f"≥ {quantity(low, unit)}"
    return "any"


def _number(value: float, decimals: int = 1) -> str:
    text = f"{value:,.{decimals}f}".rstrip("0").rstrip(".")
    return text or "0"
