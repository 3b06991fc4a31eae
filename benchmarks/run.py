"""Run every benchmark: ``python -m benchmarks.run [--quick] [--write benchmarks/RESULTS.md]``.

``--write`` puts the measured table, the machine and the exact command into the file, between
markers, so hand-written analysis around them survives a re-run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import (
    bench_insert_scaling,
    bench_mcp,
    bench_mixed_throughput,
    bench_profile,
    bench_read_overhead,
    bench_rest,
    bench_watch,
    bench_write_path,
    common,
)

BENCHMARKS: dict[str, common.Runner] = {
    "read_overhead": bench_read_overhead.run,
    "insert_scaling": bench_insert_scaling.run,
    "profile_vs_aggregate": bench_profile.run,
    "watch": bench_watch.run,
    "rest": bench_rest.run,
    "write_path": bench_write_path.run,
    "mixed_throughput": bench_mixed_throughput.run,
    "mcp_query": bench_mcp.run,
}
START = "<!-- benchmarks.run: start (generated, do not edit by hand) -->"
END = "<!-- benchmarks.run: end -->"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repetitions: a smoke check; targets are shown, not enforced",
    )
    parser.add_argument("--only", choices=list(BENCHMARKS), action="append", default=None)
    parser.add_argument("--write", type=Path, metavar="FILE", help="record the results in FILE")
    args = parser.parse_args(argv)
    load_before = common.load()
    print(f"machine: {common.machine()}; load before: {load_before}", flush=True)
    started = time.perf_counter()
    outcomes: list[common.Outcome] = []
    for name in args.only or list(BENCHMARKS):
        print(f"--- {name}", flush=True)
        for outcome in BENCHMARKS[name](args.quick):
            print(outcome.report(), flush=True)
            outcomes.append(outcome)
    wall = time.perf_counter() - started
    load_after = common.load()
    print(f"--- {len(outcomes)} cases in {wall:.0f} s; load after: {load_after}")
    if args.write:
        block = markdown(outcomes, args.quick, f"{load_before} -> {load_after}", wall)
        write_block(args.write, block)
        print(f"results written to {args.write}")
    return common.exit_code(outcomes, args.quick)


def markdown(outcomes: Sequence[common.Outcome], quick: bool, load: str, wall: float) -> str:
    smoke = " (smoke sizes: targets not enforced)" if quick else ""
    lines = [
        START,
        f"Command: `{common.command_line()}`{smoke}",
        "",
        f"Date: {common.today()}. Machine: {common.machine()}. "
        f"Load average (1/5/15 min) before -> after: {load}. Wall time: {wall:.0f} s.",
        "",
        "| benchmark | baseline median | subject median | added | ratio | paired ratio "
        "| target | result | n |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    lines += [
        f"| {o.name} | {common.fmt_s(o.baseline_median)} | {common.fmt_s(o.subject_median)} "
        f"| {o.added_text} | {o.ratio:.3f} | {o.paired_ratio:.3f} | {o.target_text} "
        f"| {'pass' if o.passed else '**FAIL**'} | {len(o.subject_s)} |"
        for o in outcomes
    ]
    lines.append("")
    for o in outcomes:
        lines.append(f"- **{o.name}**: baseline = {o.baseline}; subject = {o.subject}.")
        lines += [f"  - {key}: {value}" for key, value in o.extra.items()]
    lines.append(END)
    return "\n".join(lines)


def write_block(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = (text or "# Benchmark results\n\n") + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
