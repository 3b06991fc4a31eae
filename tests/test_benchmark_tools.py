"""The instruments of the write-path and mixed-load benchmarks, on a tiny lake (the cases
themselves run with ``python -m benchmarks.run``)."""

from __future__ import annotations

from benchmarks import common
from benchmarks.bench_mixed_throughput import PercentileOutcome
from benchmarks.mixed_load import Tally
from benchmarks.stage_timer import StageTimer

import lakewarden.core.session as session_module


def test_stage_timer_splits_a_governed_write_and_puts_everything_back() -> None:
    shipped = session_module.analyze
    with common.temp_lake() as warden:
        common.build_table(warden, "t", 100, 4)
        with warden.session("bench") as s, StageTimer() as timer:
            timer.wrap_transaction_cursors()
            timer.wrap_cursor(warden.tracker, "_cur")
            timer.wrap_lock(warden.engine, "write_lock")
            for i in range(3):
                with timer.statement():
                    s.sql("INSERT INTO t (id) VALUES (?)", [1000 + i])
        assert warden.table("t").rows == 103
        assert not hasattr(warden.tracker._cur, "_timer")
    assert session_module.analyze is shipped
    assert len(timer.samples) == 3
    sample, total = timer.samples[-1], timer.totals[-1]
    for label in ("the statement", "COMMIT", "set_commit_message"):
        assert sample.get(label, 0) > 0, (label, sample)
    # A commit that changed rows carries its audit record in the snapshot: no audit row.
    assert "audit row INSERT" not in sample, sample
    # Exclusive times: the stages of a statement never add up to more than the statement.
    assert sum(sample.values()) <= total
    assert 0 < timer.lock_held[-1] <= total
    report = timer.report()
    assert any("commit" in key for key in report), report


def test_a_tail_outcome_compares_pooled_percentiles() -> None:
    one = [0.010] * 99 + [0.020]
    eight = [0.020] * 99 + [0.050]
    outcome = PercentileOutcome(
        name="tail",
        baseline="1",
        subject="8",
        baseline_s=one,
        subject_s=eight,
        target=3.0,
        baseline_rounds=[one[:50], one[50:]],
        subject_rounds=[eight[:50], eight[50:]],
    )
    assert outcome.baseline_median == 0.010 and outcome.subject_median == 0.020
    assert outcome.passed and outcome.ratio == 2.0
    assert outcome.paired_ratio == (2.0 + 2.5) / 2


def test_a_round_tally_survives_the_pipe() -> None:
    tally = Tally()
    tally.done(True, 0.01, True, "", 5)
    tally.done(False, 0.02, True, "", 1_000_000_001)
    tally.done(False, 0.03, False, "HTTP 500", 1_000_000_002)
    again = Tally.from_json(tally.to_json())
    assert again == tally
    assert (again.statements, again.acked, again.errors) == (2, [1_000_000_001], ["HTTP 500"])
