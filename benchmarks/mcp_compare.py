"""lakewarden's MCP ``query`` tool at an earlier revision and now, against motherduck, in one run.

    python -m benchmarks.mcp_compare REV [--repeats N]

``mcp_query`` compares the working tree with motherduck; comparing two of its runs compares two
machines' moods as well. Here the servers of both revisions run side by side (``src/`` of
``REV`` from ``git archive``, imported ahead of the installed one) with motherduck's two modes,
each serving only its own ``mcp.Client``, calls interleaved as in ``mcp_query``: the ratios of
one run, before and after. The table is ``mcp_query``'s, on the DuckDB file and on a DuckLake lake.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from io import BytesIO
from pathlib import Path

from anyio.from_thread import start_blocking_portal

from benchmarks import bench_mcp, common


def _lakewarden(name: str, target: list[str], src: Path | None) -> bench_mcp.Spec:
    """``lakewarden serve`` from the installed tree, or from ``src`` (an earlier revision)."""
    port = bench_mcp.free_port()
    args = ["serve", *target, "--port", str(port)]
    if src is None:
        argv = [sys.executable, "-m", "lakewarden.intake.cli", *args]
    else:
        code = (
            f"import sys; sys.path.insert(0, {str(src)!r}); import lakewarden; "
            f"assert lakewarden.__file__.startswith({str(src)!r}); "
            "from lakewarden.intake.cli import main; "
            f"sys.argv = ['lakewarden', *{args!r}]; main()"
        )
        argv = [sys.executable, "-c", code]
    return bench_mcp.Spec(name, argv, f"http://127.0.0.1:{port}", "/readyz")


def run(rev: str, repeats: int) -> dict[str, float]:
    home = bench_mcp.motherduck_venv()
    with tempfile.TemporaryDirectory(prefix="lakewarden-mcp-compare-") as tmp:
        root = Path(tmp)
        archive = subprocess.run(
            ["git", "archive", rev, "src"], cwd=bench_mcp.ROOT, capture_output=True, check=True
        )
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(root / "before", filter="data")
        before = root / "before" / "src"
        lake, file = bench_mcp._build(root)
        lake_before = bench_mcp._build_lake(root / "lake-before")
        md_file = bench_mcp._copy(file, root / "md")
        file_after, file_before = (bench_mcp._copy(file, root / side) for side in ("a", "b"))
        specs = [
            bench_mcp.motherduck_spec("md persistent", home, md_file, persistent=True),
            bench_mcp.motherduck_spec("md default", home, md_file, persistent=False),
            _lakewarden("file after", ["--duckdb", str(file_after)], None),
            _lakewarden("file before", ["--duckdb", str(file_before)], before),
            _lakewarden("lake after", ["--lake", str(lake)], None),
            _lakewarden("lake before", ["--lake", str(lake_before)], before),
        ]
        with ExitStack() as stack:
            urls = stack.enter_context(bench_mcp.servers(specs, root))
            agent = bench_mcp.Agent(stack.enter_context(start_blocking_portal()), stack)
            query = {"sql": bench_mcp.QUERY}
            fns: dict[str, Callable[[], object]] = {}
            for name, url in urls.items():
                if name.startswith("md"):
                    client = agent.mcp(url + "/mcp", None)
                    call = partial(client.call_tool, "execute_query", query)
                    fns[name] = agent.timed(call, bench_mcp._motherduck_rows)
                else:
                    client = agent.mcp(url + "/mcp/", {"X-Lakewarden-Agent": common.BENCH_AGENT})
                    call = partial(client.call_tool, "query", query)
                    fns[name] = agent.timed(call, bench_mcp._lakewarden_rows)
            times = common.measure(fns, repeats=repeats, warmup=20, self_timed=frozenset(fns))
    return {name: common.percentile(samples, 50) for name, samples in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rev", help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--repeats", type=int, default=bench_mcp.REPEATS)
    args = parser.parse_args(argv)
    p50 = run(args.rev, args.repeats)
    for name, seconds in p50.items():
        print(f"{name:<14} p50 {common.fmt_s(seconds)}")
    for when in ("before", "after"):
        print(
            f"{when:<6} file / md persistent {p50[f'file {when}'] / p50['md persistent']:.3f}"
            f" (target <= {bench_mcp.FILE_TARGET}); lake / md default "
            f"{p50[f'lake {when}'] / p50['md default']:.3f} (target <= {bench_mcp.LAKE_TARGET})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
