"""The soak benchmark, CI-sized: two minutes of eight agents against a real sidecar.

The recorded run is 30 minutes (benchmarks/RESULTS.md, "Soak"); this one proves the harness and
the parts of its verdict that hold on any length: no error but the expected refusals and gate
blocks, every acknowledged row in the lake exactly once, a clean exit on SIGTERM, and small
files merged by the policy's maintenance while the agents write.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from benchmarks import soak

DURATION_S = float(os.environ.get("LAKEWARDEN_SOAK_CI_S", "120"))


@pytest.mark.slow
@pytest.mark.timeout(DURATION_S + 300)
def test_two_minutes_of_eight_agents(tmp_path: Path) -> None:
    report = soak.soak(DURATION_S, 15.0, tmp_path, maintenance_every="30s")
    totals = {key for window in report.windows for key in window.outcomes}
    assert report.errors == []
    assert {"read:ok", "write:ok", "blocked:ok", "refused:ok"} <= totals
    assert report.acked > 100
    assert (report.lost, report.duplicated) == (0, 0)
    # Maintenance ran: a scan reads far fewer files than the writes left.
    assert report.files_scanned_end < report.files_end / 2, report
    # Threads and open files do not grow with the statements.
    assert max(w.threads for w in report.windows) - report.windows[0].threads <= 8
    assert max(w.fds for w in report.windows) - report.windows[0].fds <= 16
