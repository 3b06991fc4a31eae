"""The ``lakewarden`` command line, a thin adapter over the same core as the SDK."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from lakewarden import __version__
from lakewarden.errors import LakewardenError
from lakewarden.intake import lakefiles
from lakewarden.settings import (
    ENV_DATA_PATH,
    ENV_LAKE,
    ENV_POLICY,
    ENV_POLL_INTERVAL,
    ENV_SERVER,
    ENV_TOKEN,
    POSTGRES_PREFIX,
    Settings,
)
from lakewarden.wire import AGENT_HEADER
from lakewarden.wording import plural

app = typer.Typer(
    name="lakewarden",
    help="Governance sidecar for AI agents that query and write lakehouse tables.",
    no_args_is_help=True,
    add_completion=False,
)
policy_app = typer.Typer(help="Work with policy files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
anomaly_app = typer.Typer(help="Work with a table's anomaly models.", no_args_is_help=True)
app.add_typer(anomaly_app, name="anomaly")

T = TypeVar("T")
console = Console()
# Messages are sentences: never hard-wrapped at 80 columns when stderr is a file or a pipe.
err_console = Console(stderr=True, soft_wrap=True)

LAKE_HELP = "DuckLake folder, .duckdb file, or postgres:DSN (a PostgreSQL catalog; --data-path)."
LakeOption = Annotated[str, typer.Option("--lake", help=LAKE_HELP, envvar=ENV_LAKE)]
DataPathOption = Annotated[
    str | None,
    typer.Option(
        "--data-path",
        help="Data files of a postgres:DSN lake (a folder every sidecar shares).",
        envvar=ENV_DATA_PATH,
    ),
]
PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="Policy file (YAML).", envvar=ENV_POLICY)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(error: LakewardenError) -> NoReturn:
    from rich.text import Text

    # Messages are plain text: a "[...]" in them is data, not rich markup.
    err_console.print(Text.assemble(("error", "bold red"), f" ({error.code}): {error.message}"))
    for violation in error.violations:
        if violation.detail not in error.message:  # a policy error already lists its problems
            err_console.print(Text(f"  - {violation.rule}: {violation.detail}"))
    raise typer.Exit(code=2)


DEFAULT_SERVER = "http://127.0.0.1:7117"
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Ask a running lakewarden server (its REST API) instead of opening the lake.",
        envvar=ENV_SERVER,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help="Bearer token for --server.", envvar=ENV_TOKEN),
]
AgentOption = Annotated[
    str, typer.Option("--agent", help="Who is acting (the policy decides what it may do).")
]


class _Local:
    """The lake opened in this process."""

    def __init__(self, warden: Any) -> None:
        self.warden = warden

    def table(self, name: str) -> dict[str, Any]:
        return dict(self.warden.describe(name))

    def snapshots(self, table: str | None, limit: int) -> list[dict[str, Any]]:
        if table is not None:
            self.warden.table(table)  # NotFound for a table that does not exist
        return [s.to_dict() for s in self.warden.snapshots(table, limit)]

    def restore(self, table: str, snapshot_id: int, agent: str) -> dict[str, Any]:
        from lakewarden.intake.jsonvalues import result_json

        return result_json(self.warden.restore(table, snapshot_id, agent=agent))

    def audit(self, agent: str | None, limit: int) -> list[dict[str, Any]]:
        return list(self.warden.audit(agent, limit))

    def accept_anomaly(self, table: str, agent: str) -> dict[str, Any]:
        return dict(self.warden.accept_anomaly(table, agent=agent))

    def close(self) -> None:
        self.warden.close()


class _Remote:
    """A running server holds the lake: go through its REST API."""

    def __init__(self, url: str, token: str | None, agent: str | None) -> None:
        from lakewarden.client import Client

        self.client = Client(url, token=token, agent=agent)

    def table(self, name: str) -> dict[str, Any]:
        return self.client.table(name)

    def snapshots(self, table: str | None, limit: int) -> list[dict[str, Any]]:
        return self.client.snapshots(table, limit)

    def restore(self, table: str, snapshot_id: int, agent: str) -> dict[str, Any]:
        return self.client.restore(table, snapshot_id)

    def audit(self, agent: str | None, limit: int) -> list[dict[str, Any]]:
        return self.client.audit(agent, limit)

    def accept_anomaly(self, table: str, agent: str) -> dict[str, Any]:
        return self.client.accept_anomaly(table)

    def close(self) -> None:
        self.client.close()


def _target(lake: str) -> str | Path:
    """What ``--lake`` names: a ``postgres:`` connection string as given, else a path."""
    return lake if lake.startswith(POSTGRES_PREFIX) else Path(lake)


def _ask(
    work: Callable[[_Local | _Remote], T],
    lake: str,
    policy: Path | None,
    server: str | None,
    token: str | None = None,
    agent: str | None = None,
    data_path: str | None = None,
) -> T:
    """Run ``work`` against the lake, or the server holding it; a clear error on failure."""
    try:
        target = _target(lake)
        policy = lakefiles.policy_for(target, policy)
        backend = _backend(target, policy, server, token, agent, data_path)
        try:
            return work(backend)
        finally:
            backend.close()
    except LakewardenError as exc:
        _fail(exc)


def _open_warden(lake: str, policy: Path | None, data_path: str | None) -> Any:
    """The lake opened in this process, or a clear error and exit code 2."""
    import lakewarden

    target = _target(lake)
    try:
        policy = lakefiles.policy_for(target, policy)
        return lakewarden.open(target, policy=policy, data_path=data_path)
    except LakewardenError as exc:
        _fail(exc)


def _server_up(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url.rstrip("/") + "/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _backend(
    lake: str | Path,
    policy: Path | None,
    server: str | None,
    token: str | None = None,
    agent: str | None = None,
    data_path: str | None = None,
) -> _Local | _Remote:
    """The lake itself, or, when a server holds it (a DuckDB catalog admits one process), the
    server's API: the same answers either way."""
    import lakewarden

    token = lakefiles.cli_token(lake, token)
    if server:
        return _Remote(server, token, agent)
    if isinstance(lake, Path) and not lake.exists():
        raise LakewardenError(f"no lake at {lake}: give --lake DIR (or a .duckdb file)")
    try:
        return _Local(lakewarden.open(lake, policy=policy, data_path=data_path))
    except lakewarden.ConfigurationError as exc:
        if "lock" in str(exc).lower() and _server_up(DEFAULT_SERVER):
            err_console.print(
                f"[dim]the lake is held by the server at {DEFAULT_SERVER}; asking it[/]"
            )
            return _Remote(DEFAULT_SERVER, token, agent)
        raise


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
    lake: LakeOption = "lakewarden-demo",
    data_path: DataPathOption = None,
    policy: PolicyOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a table's data-quality signals: rows, freshness, nulls, schema changes, checks."""
    info = _ask(
        lambda backend: backend.table(table), lake, policy, server, token, data_path=data_path
    )
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    _print_table(info)


def _print_table(info: dict[str, Any]) -> None:
    head = Table(title=str(info["table"]), show_header=False, title_justify="left")
    head.add_column("signal", style="bold")
    head.add_column("value")
    head.add_row("rows", f"{info['rows']:,}")
    head.add_row("columns", str(len(info["columns"])))
    head.add_row("last write", f"{_when(info['last_modified'])} ({_age(info['last_modified'])})")
    head.add_row("last writer", info.get("last_writer") or "-")
    if info.get("event_time_column"):
        head.add_row(
            f"max({info['event_time_column']})",
            f"{_when(info['last_event_time'])} ({_age(info['last_event_time'])})",
        )
    changes = ", ".join(f"{k}={v}" for k, v in sorted(info["schema_changes"].items())) or "none"
    head.add_row("schema changes", changes)
    snapshot = info.get("snapshot_id")
    head.add_row("snapshot", str(snapshot if snapshot is not None else "-"))
    console.print(head)
    cols = Table(title="columns", title_justify="left")
    for name in ("column", "type", "nulls", "null ratio"):
        cols.add_column(name, justify="right" if name in ("nulls", "null ratio") else "left")
    for col in info["columns"]:
        ratio = col["null_ratio"]
        style = "red" if ratio >= 0.5 else ("yellow" if ratio > 0 else "")
        shown = f"{ratio:.2%}"
        cols.add_row(
            col["name"],
            col["type"],
            f"{col['null_count']:,}",
            f"[{style}]{shown}[/]" if style else shown,
        )
    console.print(cols)
    if info.get("checks"):
        checks = Table(title="contract checks", title_justify="left")
        for name in ("check", "state", "expected", "now"):
            checks.add_column(name, overflow="fold")
        for c in info["checks"]:
            state = "[green]passing[/]" if c["passing"] else "[red]failing[/]"
            checks.add_row(c["check"], state, c.get("expected") or "-", c["detail"])
        console.print(checks)
    _print_anomalies(info.get("monitors") or {})


def _print_anomalies(monitors: dict[str, Any]) -> None:
    """Each anomaly model's latest verdict, and the range a load arriving now would pass with."""
    if not monitors:
        return
    out = Table(title="anomaly models", title_justify="left")
    for name in ("signal", "state", "latest", "expected now", "detail"):
        out.add_column(name)
    for signal, m in sorted(monitors.items()):
        if m.get("score") is None:
            state = "[dim]no verdict[/]"
        else:
            state = "[red]anomalous[/]" if m.get("anomalous") else "[green]normal[/]"
        latest = "-" if m.get("value") is None else f"{m['value']:,.0f}"
        now = m.get("now") or {}
        expected = now.get("reason") or "-"
        out.add_row(signal, state, latest, expected, str(m.get("reason", "")))
    console.print(out)


@app.command()
def snapshots(
    table: Annotated[
        str | None, typer.Argument(help="Only snapshots that changed this table.")
    ] = None,
    lake: LakeOption = "lakewarden-demo",
    data_path: DataPathOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List the lake's snapshots: who committed what, when, and in which trace."""
    snaps = _ask(
        lambda b: b.snapshots(table, limit), lake, None, server, token, data_path=data_path
    )
    if as_json:
        sys.stdout.write(json.dumps(snaps, indent=2) + "\n")
        return
    _print_snapshots(snaps, table)


def _print_snapshots(snaps: list[dict[str, Any]], table: str | None) -> None:
    days = {str(snap["time"])[:10] for snap in snaps}
    same_day = len(days) == 1
    title = f"snapshots{' of ' + table if table else ''}"
    if same_day:
        title += f", {next(iter(days))}"
    out = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    # On a narrow terminal one column says what happened (the agent's statement, or the change
    # in words for other writers) and trace ids are shortened; --json always has everything.
    wide = console.width >= 140
    for name in ("id", "time (UTC)", "agent"):
        out.add_column(name, no_wrap=True)
    texts = ("statement", "change") if wide else ("what",)
    for name in texts:
        out.add_column(name, ratio=1)
    out.add_column("rows", no_wrap=True)
    out.add_column("trace id", no_wrap=True, overflow="ellipsis", max_width=None if wide else 10)
    for snap in snaps:
        stamp = str(snap["time"])
        rows = (
            f"+{snap['rows_added']}/-{snap['rows_removed']}"
            if snap.get("rows_added") is not None
            else ""
        )
        change = snap.get("summary") or "-"
        what = (snap["message"] or "-", change) if wide else (snap["message"] or change,)
        out.add_row(
            str(snap["snapshot_id"]),
            stamp[11:19] if same_day else stamp[5:19].replace("T", " "),
            snap["agent"] or "-",
            *what,
            rows,
            snap["trace_id"] or "-",
        )
    console.print(out)


@anomaly_app.command("accept")
def anomaly_accept(
    table: Annotated[str, typer.Argument(help="Table whose current level is the new normal.")],
    lake: LakeOption = "lakewarden-demo",
    data_path: DataPathOption = None,
    policy: PolicyOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    agent: AgentOption = "operator",
) -> None:
    """Accept TABLE's current volume level (and write pace) as normal: its alerts stop now."""
    result = _ask(
        lambda backend: backend.accept_anomaly(table, agent),
        lake,
        policy,
        server,
        token,
        agent,
        data_path,
    )
    what = "accepted as the new normal" if result["changed"] else "nothing anomalous to accept"
    console.print(f"[green]{result['table']}[/]: {what}")


@app.command()
def restore(
    table: Annotated[str, typer.Argument(help="Table to restore.")],
    to: Annotated[int, typer.Option("--to", help="Snapshot id to restore the table to.")],
    lake: LakeOption = "lakewarden-demo",
    data_path: DataPathOption = None,
    policy: PolicyOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    agent: AgentOption = "operator",
) -> None:
    """Make TABLE equal to its content at snapshot --to, as one new, audited commit."""
    result = _ask(
        lambda backend: backend.restore(table, to, agent),
        lake,
        policy,
        server,
        token,
        agent,
        data_path,
    )
    rows = result["signals"].get(table, {}).get("rows", "?")
    console.print(
        f"[green]restored[/] {table} to snapshot {to}: new snapshot "
        f"{result['snapshot_id']}, {rows} rows (trace {result['trace_id']})"
    )


@app.command()
def audit(
    lake: LakeOption = "lakewarden-demo",
    data_path: DataPathOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The audit trail: every governed decision, newest first."""
    records = _ask(lambda b: b.audit(agent, limit), lake, None, server, token, data_path=data_path)
    if as_json:
        sys.stdout.write(json.dumps(records, indent=2, default=str) + "\n")
        return
    out = Table(title="audit", title_justify="left")
    for name in ("time", "agent", "decision", "summary", "snapshot", "violations"):
        out.add_column(name)
    for r in records:
        style = {"allowed": "green", "restored": "cyan"}.get(r["decision"], "red")
        out.add_row(
            str(r["time"])[:19].replace("T", " "),
            r["agent"],
            f"[{style}]{r['decision']}[/]",
            r["summary"],
            str(r["snapshot_id"] if r["snapshot_id"] is not None else "-"),
            "; ".join(v["rule"] for v in r["violations"]),
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
        f"[green]ok[/]: {file} (mode {policy.mode}, {plural(len(policy.agents), 'agent')}, "
        f"{plural(len(policy.tables), 'table contract')})"
    )
    lakefiles.export_lake_tokens(file.parent)
    missing = policy.missing_tokens()
    if missing:
        console.print(f"[yellow]note[/]: token variables not set here: {', '.join(missing)}")


# -- serving (REST + MCP), stdio MCP, demo -------------------------------------------------------


@app.command()
def serve(
    lake: Annotated[str | None, typer.Option("--lake", help=LAKE_HELP, envvar=ENV_LAKE)] = None,
    duckdb_file: Annotated[Path | None, typer.Option("--duckdb", help="DuckDB file.")] = None,
    data_path: DataPathOption = None,
    policy: PolicyOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for REST, MCP (/mcp) and /metrics.")] = 7117,
) -> None:
    """Serve REST, MCP (streamable HTTP at /mcp), /metrics, /healthz and /readyz on one port."""
    from lakewarden.intake.allocator import cap_malloc_arenas

    # Before any thread starts (see cap_malloc_arenas); one arena per engine worker, two at
    # least: request threads take turns on the GIL. A bad setting is reported by open() below.
    try:
        workers = Settings.from_env().threads
    except LakewardenError:
        workers = 2
    cap_malloc_arenas(max(2, workers))
    import lakewarden
    from lakewarden.intake.server import check_bind, run

    if (lake is None) == (duckdb_file is None):
        err_console.print("[bold red]error[/]: give exactly one of --lake DIR or --duckdb FILE")
        raise typer.Exit(code=2)
    target = _target(lake) if lake is not None else duckdb_file
    assert target is not None
    try:
        policy = lakefiles.policy_for(target, policy)
        lakefiles.export_lake_tokens(target)
        warden = lakewarden.open(target, policy=policy, data_path=data_path)
        check_bind(warden, host)
        if policy is None:
            err_console.print(OPEN_MODE_WARNING)
        else:
            err_console.print(f"policy {policy} (mode {warden.policy.mode})")
        shown = warden.engine.location.shown
        err_console.print(
            f"lakewarden {__version__} serving {shown} on http://{host}:{port} "
            f"(MCP http://{host}:{port}/mcp/, metrics http://{host}:{port}/metrics)"
        )
        run(warden, host, port)
    except LakewardenError as exc:
        _fail(exc)


OPEN_MODE_WARNING = (
    "[bold yellow]warning[/]: no policy, so the server runs in open mode: any process on this "
    f"machine can act as any agent (header {AGENT_HEADER}), with DDL rights, and nothing is "
    "refused but the security defaults. Fine for trying lakewarden on your own machine; before "
    "agents you do not fully trust connect, give --policy FILE (`lakewarden init DIR` writes one "
    "with tokens)."
)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="New folder for the lake.")],
) -> None:
    """Create a lake with an example policy and generated tokens, and say what to run next."""
    try:
        made = lakefiles.init(directory)
    except LakewardenError as exc:
        _fail(exc)
    console.print(f"[green]created[/] the lake {made.lake}/", soft_wrap=True)
    console.print(f"  policy  {made.policy}   (an admin, an ETL agent, an analyst; edit it)")
    console.print(f"  tokens  {made.tokens}   (mode 0600: each agent's bearer token)")
    console.print("\nNext:", soft_wrap=True)
    for line in (
        f"lakewarden serve --lake {made.lake}",
        f". {made.tokens}    # in another shell: the tokens as shell variables",
        'curl -s localhost:7117/v1/sql -H "Authorization: Bearer $LW_TOKEN_ADMIN" '
        '-d \'{"sql": "CREATE TABLE orders (order_id BIGINT, email VARCHAR, '
        "updated_at TIMESTAMP)\"}'",
    ):
        console.print(f"  {line}", soft_wrap=True, markup=False, highlight=False)


@app.command("mcp")
def mcp_stdio(
    lake: LakeOption,
    agent: Annotated[str, typer.Option("--agent", help="The agent this stdio server acts as.")],
    policy: PolicyOption = None,
    data_path: DataPathOption = None,
) -> None:
    """Serve MCP over stdio for one agent (for MCP clients that spawn their tools)."""
    from lakewarden.intake.mcp import build_mcp

    warden = _open_warden(lake, policy, data_path)
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


@app.command()
def watch(
    lake: LakeOption = "lakewarden-demo",
    data_path: DataPathOption = None,
    policy: PolicyOption = None,
    interval: Annotated[
        float,
        typer.Option(help="Seconds between evaluations.", envvar=ENV_POLL_INTERVAL),
    ] = 5.0,
    metrics_port: Annotated[
        int | None, typer.Option(help="Also serve Prometheus /metrics on 127.0.0.1:PORT.")
    ] = None,
    once: Annotated[bool, typer.Option(help="Evaluate once and exit.")] = False,
) -> None:
    """Watch a lake: pick up commits made by any writer and re-judge every check on a clock."""
    from lakewarden.core.monitor import Monitor

    warden = _open_warden(lake, policy, data_path)
    if interval <= 0:
        err_console.print("[bold red]error[/]: --interval must be > 0")
        raise typer.Exit(code=2)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=warden.telemetry.registry)
    monitor = Monitor(warden, interval)
    try:
        while True:
            for flip in monitor.tick():
                style = "green" if flip.passing else "red"
                console.print(
                    f"[{style}]{'PASS' if flip.passing else 'FAIL'}[/] {flip.table} "
                    f"{flip.check}: {flip.detail}"
                )
            failing = [
                (t, f) for t, found in warden.checks().items() for f in found if not f.passing
            ]
            console.print(
                f"[dim]{_when(warden.clock())}: {plural(len(warden.tables()), 'table')}, "
                f"{plural(len(failing), 'failing check')}[/]"
            )
            if once:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        warden.close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
