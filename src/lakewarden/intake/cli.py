"""The ``lakewarden`` command line, a thin adapter over the same core as the SDK."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lakewarden import __version__
from lakewarden.errors import LakewardenError

app = typer.Typer(
    name="lakewarden",
    help="Governance sidecar for AI agents that query and write lakehouse tables.",
    no_args_is_help=True,
    add_completion=False,
)
policy_app = typer.Typer(help="Work with policy files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

console = Console()
err_console = Console(stderr=True)

LakeOption = Annotated[
    Path, typer.Option("--lake", help="DuckLake folder or .duckdb file.", envvar="LAKEWARDEN_LAKE")
]
PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="Policy file (YAML).", envvar="LAKEWARDEN_POLICY")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(error: LakewardenError) -> None:
    err_console.print(f"[bold red]error[/] ({error.code}): {error.message}")
    for violation in error.violations:
        err_console.print(f"  - {violation.rule}: {violation.detail}")
    raise typer.Exit(code=2)


def _open(lake: Path, policy: Path | None) -> Any:
    import lakewarden

    if not lake.exists():
        raise LakewardenError(f"no lake at {lake}: give --lake DIR (or a .duckdb file)")
    return lakewarden.open(lake, policy=policy)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    seconds = max(0.0, datetime.now(tz=UTC).timestamp() - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


@app.command()
def version() -> None:
    """Print the lakewarden version."""
    console.print(__version__)


@app.command()
def check(
    table: Annotated[str, typer.Argument(help="Table name, e.g. orders or staging.orders.")],
    lake: LakeOption = Path("lakewarden-demo"),
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a table's data-quality signals: rows, freshness, nulls, schema changes."""
    try:
        with _open(lake, policy) as warden:
            state = warden.table(table)
    except LakewardenError as exc:
        _fail(exc)
        return
    summary = state.summary()
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        return
    head = Table(title=f"{state.name}", show_header=False, title_justify="left")
    head.add_column("signal", style="bold")
    head.add_column("value")
    head.add_row("rows", f"{state.rows:,}")
    head.add_row("columns", str(len(state.columns)))
    head.add_row("last write", f"{_when(state.last_modified)} ({_age(state.last_modified)})")
    head.add_row("last writer", state.last_writer or "-")
    if state.event_time_column:
        head.add_row(
            f"max({state.event_time_column})",
            f"{_when(state.last_event_time)} ({_age(state.last_event_time)})",
        )
    changes = ", ".join(f"{k}={v}" for k, v in sorted(state.schema_changes.items())) or "none"
    head.add_row("schema changes", changes)
    head.add_row("snapshot", str(state.snapshot_id if state.snapshot_id is not None else "-"))
    console.print(head)
    cols = Table(title="columns", title_justify="left")
    for name in ("column", "type", "nulls", "null ratio"):
        cols.add_column(name, justify="right" if name in ("nulls", "null ratio") else "left")
    for col in state.columns:
        ratio = state.null_ratio(col.name)
        style = "red" if ratio >= 0.5 else ("yellow" if ratio > 0 else "")
        cols.add_row(
            col.name,
            col.type,
            f"{col.null_count:,}",
            f"[{style}]{ratio:.2%}[/]" if style else f"{ratio:.2%}",
        )
    console.print(cols)


@app.command()
def snapshots(
    table: Annotated[
        str | None, typer.Argument(help="Only snapshots that changed this table.")
    ] = None,
    lake: LakeOption = Path("lakewarden-demo"),
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List the lake's snapshots: who committed what, when, and in which trace."""
    try:
        with _open(lake, None) as warden:
            snaps = warden.snapshots(table, limit=limit)
    except LakewardenError as exc:
        _fail(exc)
        return
    if as_json:
        sys.stdout.write(json.dumps([s.to_dict() for s in snaps], indent=2) + "\n")
        return
    out = Table(title=f"snapshots{' of ' + table if table else ''}", title_justify="left")
    for name in ("id", "time", "agent", "summary", "changes", "trace id"):
        out.add_column(name)
    for snap in snaps:
        changes = "; ".join(f"{k}" for k in snap.changes)
        out.add_row(
            str(snap.snapshot_id),
            snap.time.strftime("%Y-%m-%d %H:%M:%S"),
            snap.agent or "-",
            snap.message or "-",
            changes,
            snap.trace_id or "-",
        )
    console.print(out)


@policy_app.command("validate")
def policy_validate(file: Annotated[Path, typer.Argument(help="Policy file to check.")]) -> None:
    """Check a policy file; print every problem with its line number."""
    from lakewarden.governance.policy import load_policy

    try:
        policy = load_policy(file)
    except LakewardenError as exc:
        _fail(exc)
        return
    console.print(
        f"[green]ok[/]: {file} (mode {policy.mode}, {len(policy.agents)} agents, "
        f"{len(policy.tables)} table contracts)"
    )
    missing = policy.missing_tokens()
    if missing:
        console.print(f"[yellow]note[/]: token variables not set here: {', '.join(missing)}")


# -- serving (REST + MCP), stdio MCP, demo -------------------------------------------------------


@app.command()
def serve(
    lake: Annotated[
        Path | None, typer.Option("--lake", help="DuckLake folder.", envvar="LAKEWARDEN_LAKE")
    ] = None,
    duckdb_file: Annotated[Path | None, typer.Option("--duckdb", help="DuckDB file.")] = None,
    policy: PolicyOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for REST, MCP (/mcp) and /metrics.")] = 7117,
) -> None:
    """Serve REST, MCP (streamable HTTP at /mcp), /metrics, /healthz and /readyz on one port."""
    import lakewarden
    from lakewarden.intake.server import check_bind, run

    if (lake is None) == (duckdb_file is None):
        err_console.print("[bold red]error[/]: give exactly one of --lake DIR or --duckdb FILE")
        raise typer.Exit(code=2)
    target = lake if lake is not None else duckdb_file
    assert target is not None
    try:
        warden = lakewarden.open(target, policy=policy)
        check_bind(warden, host)
        err_console.print(
            f"lakewarden {__version__} serving {target} on http://{host}:{port} "
            f"(MCP http://{host}:{port}/mcp/, metrics http://{host}:{port}/metrics)"
        )
        run(warden, host, port)
    except LakewardenError as exc:
        _fail(exc)


@app.command("mcp")
def mcp_stdio(
    lake: LakeOption,
    agent: Annotated[str, typer.Option("--agent", help="The agent this stdio server acts as.")],
    policy: PolicyOption = None,
) -> None:
    """Serve MCP over stdio for one agent (for MCP clients that spawn their tools)."""
    import lakewarden
    from lakewarden.intake.mcp import build_mcp

    try:
        warden = lakewarden.open(lake, policy=policy)
    except LakewardenError as exc:
        _fail(exc)
        return
    try:
        build_mcp(warden, stdio_agent=agent).run()
    finally:
        warden.close()


@app.command()
def demo(
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the demo server.")] = 7117,
    directory: Annotated[Path, typer.Option("--dir", help="Lake folder (recreated).")] = Path(
        "lakewarden-demo"
    ),
) -> None:
    """A fresh lake, a policy, the server and simulated agents, with a live table-health view."""
    from lakewarden.intake.demo import run_demo

    try:
        run_demo(directory, port=port, duration=duration, console=console)
    except LakewardenError as exc:
        _fail(exc)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
