"""Shared pieces of the benchmarks: interleaved timing, temporary lakes, table builders, reports.

Every benchmark reports a RATIO of two timings taken in one process, interleaved repetition by
repetition, so the noise of a shared machine (other jobs, frequency changes) hits both sides alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

import lakewarden

BENCH_AGENT = "bench"


# -- timing ------------------------------------------------------------------------------------


def measure(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    setup: dict[str, Callable[[], object]] | None = None,
    check: dict[str, Callable[[], object]] | None = None,
    self_timed: frozenset[str] = frozenset(),
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` times, interleaved.

    A function named in ``self_timed`` returns its own seconds instead of being timed here: a
    call made by another process, whose hand-off to and from this one is not part of the call.

    The order rotates and flips every repetition, so no function always runs first (cold) or
    right after the same neighbour. ``setup[name]`` runs right before each call of ``name`` and
    ``check[name]`` right after it (warm-up included), both outside the timed region: the state a
    call needs (e.g. a new commit to pick up) and the verification of what it did.
    """
    names = list(fns)
    setup = setup or {}
    check = check or {}

    def call(name: str) -> float:
        before, fn, after = setup.get(name), fns[name], check.get(name)
        if before is not None:
            before()
        start = time.perf_counter()
        returned = fn()
        elapsed = time.perf_counter() - start
        if name in self_timed:
            assert isinstance(returned, float), f"{name} must return its seconds"
            elapsed = returned
        if after is not None:
            after()
        return elapsed

    for _ in range(warmup):
        for name in names:
            call(name)
    gc.collect()  # start from a clean heap; collections during the run are part of the cost
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        shift = i % len(names)
        order = names[shift:] + names[:shift]
        if (i // len(names)) % 2:
            order.reverse()
        for name in order:
            out[name].append(call(name))
    return out


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, nearest-rank."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Outcome:
    """Baseline vs subject of one benchmark case; the verdict is the ratio of the medians
    (or, with ``target_kind="added"``, their difference; with ``"share"``, their difference
    less the median of ``floor_s``)."""

    name: str
    baseline: str
    subject: str
    baseline_s: list[float]
    subject_s: list[float]
    target: float
    extra: dict[str, str] = field(default_factory=dict)  # diagnostics for the report
    # "ratio": the verdict is ratio <= target; "added": it is added_s <= target (seconds), for
    # targets stated as an absolute added latency; "share": it is share_s <= target.
    target_kind: str = "ratio"
    # Interleaved with the other two: what the subject pays that is nobody's work under test
    # (e.g. the HTTP round trip to a server with no application code).
    floor_s: list[float] = field(default_factory=list)

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline_s)

    @property
    def subject_median(self) -> float:
        return statistics.median(self.subject_s)

    @property
    def ratio(self) -> float:
        return self.subject_median / self.baseline_median

    @property
    def paired_ratio(self) -> float:
        """Median of per-repetition ratios: a cross-check that drift did not fake the verdict."""
        return statistics.median(
            s / b for b, s in zip(self.baseline_s, self.subject_s, strict=True)
        )

    @property
    def added_s(self) -> float:
        return self.subject_median - self.baseline_median

    @property
    def share_s(self) -> float:
        """The added time less the floor: what the subject itself adds (all medians)."""
        return self.added_s - (statistics.median(self.floor_s) if self.floor_s else 0.0)

    @property
    def passed(self) -> bool:
        if self.target_kind == "added":
            return self.added_s <= self.target
        if self.target_kind == "share":
            return self.share_s <= self.target
        return self.ratio <= self.target

    @property
    def target_text(self) -> str:
        if self.target_kind == "added":
            return f"added <= {fmt_s(self.target)}"
        if self.target_kind == "share":
            return f"added - floor <= {fmt_s(self.target)}"
        return f"<= {self.target:g}"

    @property
    def added_text(self) -> str:
        if self.floor_s:
            return f"{fmt_s(self.added_s)} (- floor: {fmt_s(self.share_s)})"
        return fmt_s(self.added_s)

    def report(self) -> str:
        lines = [
            f"{self.name}: {'PASS' if self.passed else 'FAIL'}  ratio {self.ratio:.3f} "
            f"(target {self.target_text}, paired {self.paired_ratio:.3f}, "
            f"n={len(self.subject_s)})",
            f"  baseline  {fmt_s(self.baseline_median):>10}  {self.baseline}",
            f"  subject   {fmt_s(self.subject_median):>10}  {self.subject}",
            f"  added     {fmt_s(self.added_s):>10}",
        ]
        if self.floor_s:
            lines += [
                f"  floor     {median_s(self.floor_s):>10}",
                f"  - floor   {fmt_s(self.share_s):>10}",
            ]
        lines += [f"  {key}: {value}" for key, value in self.extra.items()]
        return "\n".join(lines)


def fmt_s(seconds: float) -> str:
    magnitude = abs(seconds)
    if magnitude < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if magnitude < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def median_s(samples: Sequence[float]) -> str:
    return fmt_s(statistics.median(samples))


# -- lakes and tables --------------------------------------------------------------------------


@contextmanager
def temp_lake(
    kind: str = "ducklake", settings: lakewarden.Settings | None = None
) -> Iterator[lakewarden.Warden]:
    """A fresh lake in a temporary folder, removed afterwards.

    Telemetry and settings are the production defaults (or ``settings``), but built explicitly so
    stray ``OTEL_*`` / ``LAKEWARDEN_*`` variables in the caller's shell cannot change what is
    measured.
    """
    with tempfile.TemporaryDirectory(prefix="lakewarden-bench-") as tmp:
        target = Path(tmp) / ("lake" if kind == "ducklake" else "bench.duckdb")
        warden = lakewarden.open(
            target,
            telemetry=lakewarden.Telemetry(env={}),
            settings=settings or lakewarden.Settings(),
        )
        try:
            yield warden
        finally:
            warden.close()


# (name, SQL template over the row number ``i``, base modulus). About half can be NULL.
_KINDS: tuple[tuple[str, str, int], ...] = (
    ("grp", "(i % {m})::INTEGER", 100),
    ("amount", "CASE WHEN i % {m} = 0 THEN NULL ELSE (i % 1000) / 10.0 END", 17),
    ("name", "CASE WHEN i % {m} = 0 THEN NULL ELSE 'user-' || (i % 5000)::VARCHAR END", 11),
    ("flag", "i % {m} = 0", 3),
    ("qty", "CASE WHEN i % {m} = 0 THEN NULL ELSE (i * 7 % 500)::INTEGER END", 13),
    ("day", "DATE '2024-01-01' + (i % {m})::INTEGER", 365),
    ("score", "(hash(i + {m}) % 10000) / 100.0", 7),
    ("code", "CASE WHEN i % {m} = 0 THEN NULL ELSE chr((65 + i % 26)::INTEGER) END", 29),
)


def columns(n_cols: int) -> list[tuple[str, str]]:
    """``id``, the event time ``ts``, then typed columns cycling through ``_KINDS``."""
    cols = [("id", "i"), ("ts", "TIMESTAMP '2024-01-01' + to_seconds(i)")]
    k = 0
    while len(cols) < n_cols:
        kind, template, base = _KINDS[k % len(_KINDS)]
        lap = k // len(_KINDS)
        cols.append((f"{kind}{lap}", template.format(m=base + 2 * lap)))
        k += 1
    return cols


def select_rows(n_rows: int, n_cols: int) -> str:
    exprs = ", ".join(f"{expr} AS {name}" for name, expr in columns(n_cols))
    return f"SELECT {exprs} FROM range({n_rows}) r(i)"


def build_table(warden: lakewarden.Warden, name: str, n_rows: int, n_cols: int) -> float:
    """CREATE TABLE AS over range() on a raw cursor, then let the warden pick the commit up.

    The raw cursor has no statement time limit, which a 10M-row build may need on a slow box;
    ``refresh()`` then profiles the new table exactly as it would any outside commit. Returns
    the seconds taken, build and profile together.
    """
    start = time.perf_counter()
    cur = warden.engine.cursor()
    try:
        cur.execute(f"CREATE TABLE {name} AS {select_rows(n_rows, n_cols)}")
    finally:
        cur.close()
    warden.refresh()
    state = warden.table(name)
    if state.rows != n_rows:
        raise RuntimeError(f"{name}: tracker saw {state.rows} rows, expected {n_rows}")
    return time.perf_counter() - start


# -- command line and reports ------------------------------------------------------------------


Runner = Callable[[bool], list[Outcome]]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
        f"duckdb {duckdb.__version__}, lakewarden {lakewarden.__version__}"
    )


def load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def parse(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repetitions: a smoke check; targets are shown, not enforced",
    )
    return parser.parse_args(argv)


def exit_code(outcomes: Sequence[Outcome], quick: bool) -> int:
    # Quick sizes are too small for the targets to mean anything; only a crash fails a smoke run.
    if quick:
        return 0
    return 0 if all(o.passed for o in outcomes) else 1


def main(run: Runner, argv: Sequence[str] | None, description: str) -> int:
    """The ``python -m benchmarks.bench_x`` entry point shared by every benchmark module."""
    args = parse(argv, description)
    print(f"machine: {machine()}; load before: {load()}", flush=True)
    outcomes = run(args.quick)
    for outcome in outcomes:
        print(outcome.report(), flush=True)
    print(f"load after: {load()}")
    return exit_code(outcomes, args.quick)


def command_line() -> str:
    return " ".join(["python", "-m", *_module_argv()])


def _module_argv() -> list[str]:
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    name = spec.name if spec is not None else Path(sys.argv[0]).stem
    return [name, *sys.argv[1:]]


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
