"""The anomaly benchmark's summary figures, at a size that fits CI (the full run is 200 series
per set: ``python -m benchmarks.anomaly``)."""

from __future__ import annotations

import pytest
from benchmarks.anomaly import __main__ as bench
from benchmarks.anomaly.generator import KINDS

SERIES = 12  # per set: three of each kind
# Per kind, three series hold about 14 incidents, so one miss is 7 points of recall: the 0.90
# per-kind target is checked on the full run (RESULTS.md); here a kind may miss two.
KIND_RECALL = 0.85


@pytest.fixture(scope="module")
def rows() -> dict[tuple[str, str], bench.Row]:
    found, per_write = bench.run(SERIES, list(bench.scoring.METHODS), lambda _: None)
    assert per_write > 0
    return {(r.dataset, r.method): r for r in found}


@pytest.mark.parametrize("dataset", ["main", "independent"])
def test_lakewarden_meets_the_targets(rows: dict[tuple[str, str], bench.Row], dataset: str) -> None:
    row = rows[(dataset, "lakewarden")]
    assert row.total.incidents >= 30
    assert row.total.recall >= 0.95, row.cells()
    for kind in KINDS:
        tally = row.kinds[kind]
        assert tally.recall >= KIND_RECALL, (kind, row.cells())
        assert tally.fpr <= 0.005, (kind, row.cells())
    assert all(h <= 48 for h in row.total.settle_hours), row.total.settle_hours
    assert row.total.dst_false / max(row.total.dst_clean, 1) <= 0.005


@pytest.mark.parametrize("dataset", ["main", "independent"])
@pytest.mark.parametrize("method", ["elementary", "elementary_hod", "re_data"])
def test_references_catch_less(
    rows: dict[tuple[str, str], bench.Row], dataset: str, method: str
) -> None:
    ours, theirs = rows[(dataset, "lakewarden")], rows[(dataset, method)]
    assert theirs.total.incidents == ours.total.incidents  # the same series, the same incidents
    assert theirs.total.recall < ours.total.recall


def test_table_renders(rows: dict[tuple[str, str], bench.Row]) -> None:
    text = bench.markdown(list(rows.values()), 30.0, 1.0, "python -m benchmarks.anomaly")
    assert text.startswith(bench.START) and text.endswith(bench.END)
    assert text.count("| main |") == len(bench.scoring.METHODS)
