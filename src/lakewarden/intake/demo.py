"""``lakewarden demo``: a fresh lake, a policy, the server and five simulated agents.

Everything runs offline in one process: the server listens on loopback, the agents are threads
that talk to it through the REST client with their own bearer tokens (random per run, written to
``<dir>/tokens.env``, mode 0600, beside ``<dir>/policy.yaml``; the CLI finds both there).

Within its first twenty seconds, on every run, the demo shows what lakewarden is for: a statement
refused by the security defaults, a write rolled back by the quality gate (409, with the measured
value and the limit), a schema change, a write allowed in warn mode and flagged, and a damaging
write undone by restoring the table to its last good snapshot. Then the agents keep going:

- ``etl-writer`` inserts realistic orders (with an ``updated_at`` event time),
- ``analyst`` runs SELECTs and, once in a while, a write it is not allowed to make,
- ``careless`` writes NULL-heavy rows (blocked by the gate) and tries statements that are
  always refused (ATTACH, COPY, two statements in one call, file-reading table functions),
- ``backfill`` runs in warn mode: its writes commit, with the rules they broke flagged,
- ``operator`` creates the table and restores it when a write damages it.

The lake stays afterwards for ``lakewarden snapshots`` and ``lakewarden check orders``.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

import lakewarden
from lakewarden import wording
from lakewarden.client import Client, ClientSession, RemoteResult
from lakewarden.errors import LakewardenError
from lakewarden.intake.lakefiles import CLI_TOKEN, POLICY_FILE, TOKEN_FILE
from lakewarden.intake.server import DEFAULT_PORT, ServerThread

__all__ = ["AGENTS", "run_demo"]

AGENTS = {
    "etl-writer": "LW_DEMO_TOKEN_ETL",
    "analyst": "LW_DEMO_TOKEN_ANALYST",
    "careless": "LW_DEMO_TOKEN_CARELESS",
    "backfill": "LW_DEMO_TOKEN_BACKFILL",
    "operator": "LW_DEMO_TOKEN_OPERATOR",
}

POLICY = """\
# The demo's policy: see `lakewarden policy validate` and the README for every key.
version: 1
mode: enforce
restore: [operator]
agents:
  operator: {token_env: LW_DEMO_TOKEN_OPERATOR, read: ["*"], write: ["*"], ddl: true}
  etl-writer: {token_env: LW_DEMO_TOKEN_ETL, read: ["*"], write: [orders]}
  analyst: {token_env: LW_DEMO_TOKEN_ANALYST, read: ["*"], max_rows: 1000, timeout_s: 10}
  careless: {token_env: LW_DEMO_TOKEN_CARELESS, read: ["*"], write: [orders], ddl: true}
  backfill: {token_env: LW_DEMO_TOKEN_BACKFILL, read: ["*"], write: [orders], mode: warn}
tables:
  orders:
    event_time: updated_at
    freshness_sla: 1h
    schema: additive
    volume: {max_rows_per_write: 500, max_delete_ratio: 0.2}
    columns:
      order_id: {type: BIGINT, nullable: false}
      email: {max_null_ratio: 0.1}
    anomaly:
      # The demo's agents write every few hundred milliseconds: once it stops, a quiet table is
      # not news until the gap is long on a human scale too.
      freshness: {min_abs_change: 900}
"""

CREATE_ORDERS = (
    "CREATE TABLE orders (order_id BIGINT, customer_id BIGINT, email VARCHAR, "
    "amount DECIMAL(10, 2), currency VARCHAR, status VARCHAR, updated_at TIMESTAMP)"
)
# Names its columns, so the careless agent's new column does not break it.
INSERT_ORDER = (
    "INSERT INTO orders (order_id, customer_id, email, amount, currency, status, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SEED_ORDERS = (
    "INSERT INTO orders (order_id, customer_id, email, amount, currency, status, updated_at) "
    "SELECT 1000000 + range, range % 97, 'customer' || range || '@example.com', "
    "(range % 400) + 5.5, ['EUR', 'USD', 'GBP'][range % 3 + 1], "
    "['placed', 'paid', 'shipped', 'delivered'][range % 4 + 1], now()::TIMESTAMP "
    "FROM range(60)"
)
NULL_ORDERS = (
    "INSERT INTO orders (order_id, customer_id, email, amount, currency, status, updated_at) "
    "SELECT {base} + range, range, NULL, NULL, NULL, 'placed', now()::TIMESTAMP FROM range({n})"
)
ANALYST_QUERIES = (
    "SELECT status, count(*) AS orders, sum(amount) AS revenue FROM orders GROUP BY status",
    "SELECT currency, avg(amount) AS avg_amount FROM orders GROUP BY currency",
    "SELECT count(*) FILTER (WHERE email IS NULL) AS missing_email, count(*) FROM orders",
    "SELECT max(updated_at) AS latest FROM orders",
    "SELECT customer_id, sum(amount) AS spent FROM orders GROUP BY 1 ORDER BY 2 DESC LIMIT 5",
)
FORBIDDEN = (  # statement, and how the view names it
    ("SELECT * FROM read_csv('/etc/passwd')", "SELECT read_csv()"),
    ("ATTACH 'elsewhere.duckdb' AS other", "ATTACH"),
    ("COPY orders TO 'orders.csv'", "COPY"),
    ("SELECT 1; DELETE FROM orders", "two statements"),
)
DAMAGE = "DELETE FROM orders WHERE status <> 'delivered'"
EVENTS_SHOWN = 9
LOG_FILE = "lakewarden.log"


@dataclass
class Board:
    """What the agents saw, for the live view (the server keeps the real record)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statements: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    blocked: Counter[str] = field(default_factory=Counter)
    flagged: Counter[str] = field(default_factory=Counter)
    events: deque[tuple[float, str, str, str]] = field(
        default_factory=lambda: deque(maxlen=EVENTS_SHOWN)
    )
    # The scripted story's events stay on screen, not just the latest noise.
    pinned: list[tuple[float, str, str, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def event(self, agent: str, outcome: str, detail: str, pin: bool = False) -> None:
        with self.lock:
            item = (time.monotonic() - self.started, agent, outcome, detail)
            (self.pinned if pin else self.events).append(item)

    def shown(self) -> list[tuple[float, str, str, str]]:
        """The story's events, then the latest others, at most EVENTS_SHOWN in all."""
        with self.lock:
            pinned, recent = list(self.pinned), list(self.events)
        return pinned + recent[max(0, len(recent) - (EVENTS_SHOWN - len(pinned))) :]

    def done(self, agent: str, result: RemoteResult, summary: str, pin: bool = False) -> None:
        with self.lock:
            self.statements[agent] += 1
            if result.violations:
                self.flagged[agent] += 1
        if result.violations:
            self.event(agent, "flagged", f"{summary}: {_broken(result.violations)}", pin)

    def failed(self, agent: str, error: LakewardenError, summary: str, pin: bool = False) -> None:
        with self.lock:
            self.statements[agent] += 1
            (self.blocked if error.code == "quality_gate_failed" else self.refused)[agent] += 1
        outcome = "blocked" if error.code == "quality_gate_failed" else "refused"
        rules = [v.to_dict() for v in error.violations]
        self.event(agent, outcome, f"{summary}: {_broken(rules) or error.message}", pin)


def _broken(violations: list[dict[str, Any]]) -> str:
    """``null_ratio:email 40% > 10%``: each broken rule with what was measured and the limit."""
    parts = []
    for v in violations[:2]:
        rule, measured, limit = str(v.get("rule", "")), v.get("measured"), v.get("limit")
        if isinstance(measured, int | float) and isinstance(limit, int | float):
            unit = "ratio" if "ratio" in rule else ""
            text = f"{rule} {wording.quantity(measured, unit)} > {wording.quantity(limit, unit)}"
        else:
            text = str(v.get("detail") or rule)
        parts.append(text)
    return "; ".join(parts)


def _order(rng: random.Random, order_id: int) -> list[Any]:
    now = datetime.now(tz=UTC).replace(tzinfo=None)
    return [
        order_id,
        rng.randint(1, 500),
        f"customer{rng.randint(1, 500)}@example.com",
        f"{rng.uniform(5, 400):.2f}",
        rng.choice(("EUR", "USD", "GBP")),
        rng.choice(("placed", "paid", "shipped", "delivered")),
        (now - timedelta(seconds=rng.uniform(0, 30))).isoformat(sep=" "),
    ]


class Agent:
    """One simulated agent: its REST session and its line on the board."""

    def __init__(self, name: str, session: ClientSession, board: Board) -> None:
        self.name, self.session, self.board = name, session, board

    def run(
        self, sql: str, params: list[Any] | None = None, summary: str = "", pin: bool = False
    ) -> Any:
        summary = summary or " ".join(sql.split()[:3])
        try:
            result = self.session.sql(sql, params)
        except LakewardenError as exc:
            self.board.failed(self.name, exc, summary, pin)
            return None
        self.board.done(self.name, result, summary, pin)
        if result.kind == "ddl":
            changes = [
                f"{kind} {count}"
                for sig in result.signals.values()
                for kind, count in (sig.get("schema_changes") or {}).items()
                if count
            ]
            detail = f"{summary}: {', '.join(changes) or 'schema changed'}"
            self.board.event(self.name, "changed", detail, pin)
        return result


def _story(agents: dict[str, Agent], client: Client, stop: threading.Event) -> None:
    """The scripted part: every run shows each thing lakewarden does, within seconds."""
    careless, backfill, operator = agents["careless"], agents["backfill"], agents["operator"]
    board = operator.board
    steps: list[tuple[float, Callable[[], Any]]] = [
        (1.0, lambda: careless.run(FORBIDDEN[0][0], summary=FORBIDDEN[0][1], pin=True)),
        (
            2.5,
            lambda: careless.run(
                NULL_ORDERS.format(base=2000000, n=40), summary="INSERT", pin=True
            ),
        ),
        (
            4.0,
            lambda: careless.run(
                "ALTER TABLE orders ADD COLUMN coupon VARCHAR", summary="ALTER orders", pin=True
            ),
        ),
        (
            6.0,
            lambda: backfill.run(
                NULL_ORDERS.format(base=3000000, n=15), summary="INSERT", pin=True
            ),
        ),
        (8.0, lambda: _damage_and_restore(backfill, operator, client, board)),
    ]
    for at, step in steps:
        if stop.wait(max(0.0, board.started + at - time.monotonic())):
            return
        step()


def _damage_and_restore(backfill: Agent, operator: Agent, client: Client, board: Board) -> None:
    """A warn-mode agent deletes most of the table; the operator restores the last good state."""
    result = backfill.run(DAMAGE, summary="DELETE orders", pin=True)
    if result is None or result.snapshot_id is None:
        return
    damaged = int(result.snapshot_id)
    good = [s["snapshot_id"] for s in client.snapshots("orders", 50) if s["snapshot_id"] < damaged]
    if not good:
        return
    try:
        restored = client.restore("orders", good[0])
    except LakewardenError as exc:
        board.failed(operator.name, exc, "RESTORE orders", pin=True)
        return
    with board.lock:
        board.statements[operator.name] += 1
    board.event(
        operator.name,
        "restored",
        f"orders to snapshot {good[0]} (before {damaged}): new snapshot {restored['snapshot_id']}",
        pin=True,
    )


def _writer(agent: Agent, stop: threading.Event, ids: Callable[[], int]) -> None:
    rng = random.Random(1)
    while not stop.wait(rng.uniform(0.1, 0.3)):
        agent.run(INSERT_ORDER, _order(rng, ids()), summary="INSERT orders")


def _analyst(agent: Agent, stop: threading.Event) -> None:
    rng = random.Random(2)
    n = 0
    while not stop.wait(rng.uniform(0.2, 0.5)):
        n += 1
        # every 15th statement is a write the analyst's policy does not grant
        if n % 15 == 0:
            agent.run("DELETE FROM orders WHERE status = 'placed'", summary="DELETE orders")
        else:
            agent.run(rng.choice(ANALYST_QUERIES))


def _careless(agent: Agent, stop: threading.Event, ids: Callable[[], int]) -> None:
    rng = random.Random(3)
    n = 0
    if stop.wait(12.0):  # after the scripted part
        return
    while not stop.wait(rng.uniform(0.8, 1.6)):
        n += 1
        if n % 2 == 0:
            sql, label = FORBIDDEN[(n // 2) % len(FORBIDDEN)]
            agent.run(sql, summary=label)
        else:
            agent.run(NULL_ORDERS.format(base=4000000 + 100 * n, n=30), summary="INSERT")


def _health(client: Client) -> Table:
    health = Table(title="table health", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for name in ("table", "rows", "last write", "by", "worst nulls", "schema", "checks"):
        health.add_column(name, no_wrap=True, justify="right" if name == "rows" else "left")
    for t in client.tables():
        info = client.table(t["table"])
        ratios = [(c["null_ratio"], c["name"]) for c in t["columns"]]
        worst = max(ratios) if ratios else (0.0, "-")
        style = "red" if worst[0] >= 0.5 else ("yellow" if worst[0] > 0.1 else "green")
        changes = sum(t["schema_changes"].values())
        failing = [c["check"] for c in info.get("checks", []) if not c["passing"]]
        health.add_row(
            t["table"],
            f"{t['rows']:,}",
            _age(t["last_modified"]),
            t["last_writer"] or "-",
            Text(f"{worst[1]} {wording.ratio(worst[0])}", style=style),
            wording.plural(changes, "change") if changes else "none",
            Text(f"{len(failing)} failing", style="red") if failing else Text("ok", "green"),
        )
    return health


def _view(client: Client, board: Board) -> Group:
    agents = Table(title="agents", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for name in ("agent", "statements", "refused", "blocked", "flagged"):
        agents.add_column(name, no_wrap=True, justify="left" if name == "agent" else "right")
    events = Table(
        title="what lakewarden did",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        expand=True,
    )
    events.add_column("at", no_wrap=True, justify="right")
    events.add_column("agent", no_wrap=True)
    events.add_column("outcome", no_wrap=True)
    events.add_column("what", overflow="fold", ratio=1)
    colours = {"refused": "red", "blocked": "magenta", "flagged": "yellow", "restored": "cyan"}
    shown = board.shown()
    with board.lock:
        for name in AGENTS:
            agents.add_row(
                name,
                str(board.statements[name]),
                Text(str(board.refused[name]), style="red" if board.refused[name] else ""),
                Text(str(board.blocked[name]), style="magenta" if board.blocked[name] else ""),
                Text(str(board.flagged[name]), style="yellow" if board.flagged[name] else ""),
            )
        for at, agent, outcome, detail in shown:
            events.add_row(f"{at:.0f}s", agent, Text(outcome, colours.get(outcome, "")), detail)
        running = time.monotonic() - board.started
    footer = Text(f"running {running:.0f}s; Ctrl-C stops", style="dim")
    return Group(_health(client), agents, events, footer)


def _age(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return f"{max(0.0, time.time() - epoch):.1f}s ago"


def _write_files(directory: Path, tokens: dict[str, str]) -> Path:
    (directory / POLICY_FILE).write_text(POLICY, encoding="utf-8")
    token_file = directory / TOKEN_FILE
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("# The demo's bearer tokens (new every run). `. THIS_FILE` for curl.\n")
        out.writelines(f"{AGENTS[a]}={t}\n" for a, t in tokens.items())
        out.write(f"# the lakewarden CLI uses this one (the operator's)\n{CLI_TOKEN}=")
        out.write(tokens["operator"] + "\n")
    return token_file


def _next_steps(directory: Path, port: int) -> list[str]:
    server = "" if port == DEFAULT_PORT else f" --server http://127.0.0.1:{port}"
    return [
        f"lakewarden check orders --lake {directory}{server}",
        f"lakewarden snapshots --lake {directory}{server}",
        f". {directory / TOKEN_FILE} && curl -s localhost:{port}/v1/sql "
        '-H "Authorization: Bearer $LW_DEMO_TOKEN_ANALYST" '
        '-d \'{"sql": "SELECT status, count(*) FROM orders GROUP BY 1"}\'',
    ]


def run_demo(
    directory: Path,
    *,
    port: int = DEFAULT_PORT,
    duration: float | None = None,
    console: Console | None = None,
) -> None:
    """Run the demo until Ctrl-C or ``duration`` seconds; the lake stays in ``directory``."""
    console = console or Console()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    tokens = {agent: secrets.token_urlsafe(24) for agent in AGENTS}
    for agent, env in AGENTS.items():
        os.environ[env] = tokens[agent]
    token_file = _write_files(directory, tokens)
    # The live view owns the terminal: lakewarden's own log lines go to a file in the lake.
    logger = logging.getLogger("lakewarden")
    handler = logging.FileHandler(directory / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False

    warden = lakewarden.open(directory, policy=directory / POLICY_FILE)
    server = ServerThread(warden, port=port)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    clients = {agent: Client(f"http://127.0.0.1:{port}", token=tokens[agent]) for agent in AGENTS}
    try:
        server.start()
        console.print(f"[bold]lakewarden demo[/]: lake {directory}/ (policy and tokens inside)")
        console.print(f"  REST {server.url}/v1/sql   MCP {server.url}/mcp/", soft_wrap=True)
        console.print(f"  metrics {server.url}/metrics   tokens {token_file}", soft_wrap=True)
        console.print("While it runs, in another shell:")
        for line in _next_steps(directory, port):
            console.print(f"  {line}", soft_wrap=True, markup=False, highlight=False)
        operator = clients["operator"]
        operator.session().sql(CREATE_ORDERS)
        operator.session().sql(SEED_ORDERS)
        counter = iter(range(1, 10**12))
        id_lock = threading.Lock()

        def next_id() -> int:
            with id_lock:
                return next(counter)

        board = Board()
        agents = {name: Agent(name, clients[name].session(), board) for name in AGENTS}
        targets: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
            (_story, (agents, operator, stop)),
            (_writer, (agents["etl-writer"], stop, next_id)),
            (_analyst, (agents["analyst"], stop)),
            (_careless, (agents["careless"], stop, next_id)),
        ]
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            threads.append(thread)
        deadline = None if duration is None else board.started + duration
        view = clients["analyst"]
        with Live(_view(view, board), console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                live.update(_view(view, board))
    except KeyboardInterrupt:
        console.print("\nstopping (Ctrl-C)")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for client in clients.values():
            client.close()
        server.stop()
        warden.close()
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()
    console.print("\ndone. The lake stays; try:")
    for line in _next_steps(directory, DEFAULT_PORT)[:2]:
        console.print(f"  {line}", soft_wrap=True, markup=False, highlight=False)
