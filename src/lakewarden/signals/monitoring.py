"""Anomaly scores of a table's volume and freshness, from its write history. Pure.

- Volume: the rows added by the latest write against the rows added by the writes before it.
- Freshness: the time since the latest write against the times between earlier writes. That gap
  is still growing, so only a gap that is too long counts: a short one is just early.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from lakewarden.signals.anomaly import AnomalyRule, AnomalyScore, score
from lakewarden.signals.table_state import WriteRecord

VOLUME = "volume"
FRESHNESS = "freshness"


@dataclass(frozen=True)
class Monitored:
    """One monitored signal of one table: its current value, verdict and history."""

    signal: str  # volume | freshness
    value: float | None
    result: AnomalyScore
    history: tuple[float, ...]  # the training points, oldest first

    def to_dict(self, keep: int = 48) -> dict[str, object]:
        r = self.result
        return {
            "signal": self.signal,
            "value": self.value,
            "score": r.score,
            "anomalous": r.anomalous,
            "expected": r.expected,
            "lower": r.lower,
            "upper": r.upper,
            "training_size": r.training_size,
            "reason": r.reason,
            "history": list(self.history[-keep:]),
        }


def volume(writes: Sequence[WriteRecord], rule: AnomalyRule) -> Monitored:
    loads = [w for w in writes if w.rows_added > 0]
    if not loads:
        return _nothing(VOLUME, "no load has been seen yet")
    *past, latest = loads
    history = [float(w.rows_added) for w in past]
    result = score(
        history,
        float(latest.rows_added),
        rule,
        at=_dt(latest.time),
        history_times=[_dt(w.time) for w in past],
    )
    return Monitored(VOLUME, float(latest.rows_added), result, tuple(history))


def freshness(writes: Sequence[WriteRecord], rule: AnomalyRule, now: float) -> Monitored:
    if not writes:
        return _nothing(FRESHNESS, "no write has been seen yet")
    times = [w.time for w in writes]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    current = max(0.0, now - times[-1])
    if rule.direction != "drop":
        rule = AnomalyRule(
            rule.min_training,
            rule.threshold,
            "spike",
            rule.min_abs_change,
            rule.min_rel_change,
            rule.seasonality,
        )
    result = score(gaps, current, rule, at=_dt(now), history_times=[_dt(t) for t in times[1:]])
    return Monitored(FRESHNESS, current, result, tuple(gaps))


def _nothing(signal: str, reason: str) -> Monitored:
    return Monitored(signal, None, AnomalyScore(None, False, None, None, None, 0, reason), ())


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
