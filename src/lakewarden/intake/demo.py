"""``lakewarden demo``: a fresh lake, a policy, the server and three simulated agents.

Everything runs offline in one process: the server listens on loopback, the agents are threads
that talk to it through the REST client with their own bearer tokens (random per run, written to
``<dir>/demo-tokens.env`` so you can try ``curl`` or an MCP client meanwhile):

- ``etl-writer`` inserts realistic orders (with an ``updated_at`` event time),
- ``analyst`` runs SELECTs and, once in a while, a write it is not allowed to make,
- ``careless-agent`` writes NULL-heavy rows, drops a column and tries statements that are always
  refused (ATTACH, COPY, two statements in one call, file-reading table functions).

The lake stays afterwards for ``lakewarden snapshots`` and ``lakewarden check orders``.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

import lakewarden
from lakewarden.client import Client, ClientSession
from lakewarden.errors import LakewardenError
from lakewarden.intake.server import ServerThread

__all__ = ["AGENTS", "run_demo"]

AGENTS = {
    "etl-writer": "LAKEWARDEN_DEMO_TOKEN_ETL",
    "analyst": "LAKEWARDEN_DEMO_TOKEN_ANALYST",
    "careless-agent": "LAKEWARDEN_DEMO_TOKEN_CARELESS",
}

POLICY = """\
version: 1
mode: enforce
agents:
  etl-writer: {token_env: LAKEWARDEN_DEMO_TOKEN_ETL, read: ["*"], write: ["orders"], ddl: true}
  analyst: {token_env: LAKEWARDEN_DEMO_TOKEN_ANALYST, read: ["*"], max_rows: 1000, timeout_s: 10}
  careless-agent: {token_env: LAKEWARDEN_DEMO_TOKEN_CARELESS, read: ["*"], write: ["orders"],
                   ddl: true}
tables:
  orders:
    event_time: updated_at
    freshness_sla: 5m
    schema: free
"""

CREATE_ORDERS = (
    "CREATE TABLE IF NOT EXISTS orders (order_id BIGINT, customer_id BIGINT, email VARCHAR, "
    "amount DECIMAL(10, 2), currency VARCHAR, status VARCHAR, coupon VARCHAR, "
    "updated_at TIMESTAMP)"
)
# The good writer never names coupon, so the careless agent's DROP COLUMN does not break it.
INSERT_ORDER = (
    "INSERT INTO orders (order_id, customer_id, email, amount, currency, status, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
ANALYST_QUERIES = (
    "SELECT status, count(*) AS orders, sum(amount) AS revenue FROM orders GROUP BY status",
    "SELECT currency, avg(amount) AS avg_amount FROM orders GROUP BY currency",
    "SELECT count(*) FILTER (WHERE email IS NULL) AS missing_email, count(*) FROM orders",
    "SELECT max(updated_at) AS latest FROM orders",
    "SELECT customer_id, sum(amount) AS spent FROM orders GROUP BY 1 ORDER BY 2 DESC LIMIT 5",
)
FORBIDDEN = (
    "ATTACH 'elsewhere.duckdb' AS other",
    "COPY orders TO 'orders.csv'",
    "SELECT 1; DELETE FROM orders",
    "SELECT * FROM read_csv('/etc/passwd')",
)


@dataclass
class Board:
    """What the agents saw, for the live view (the server keeps the real record)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statements: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    last_refusal: str = ""

    def ok(self, agent: str) -> None:
        with self.lock:
            self.statements[agent] += 1

    def refused(self, agent: str, error: LakewardenError) -> None:
        with self.lock:
            self.statements[agent] += 1
            self.refusals[agent] += 1
            self.last_refusal = f"{agent}: {error.code}: {error.message[:90]}"


def _order(rng: random.Random, order_id: int, careless: bool) -> list[Any]:
    now = datetime.now(tz=UTC).replace(tzinfo=None)
    email: str | None = f"customer{rng.randint(1, 500)}@example.com"
    amount: str | None = f"{rng.uniform(5, 400):.2f}"
    currency: str | None = rng.choice(("EUR", "USD", "GBP"))
    if careless:  # the careless agent forgets most fields
        email = None if rng.random() < 0.8 else email
        amount = None if rng.random() < 0.6 else amount
        currency = None if rng.random() < 0.5 else currency
    return [
        order_id,
        rng.randint(1, 500),
        email,
        amount,
        currency,
        rng.choice(("placed", "paid", "shipped", "delivered")),
        (now - timedelta(seconds=rng.uniform(0, 30))).isoformat(sep=" "),
    ]


def _attempt(
    board: Board, agent: str, s: ClientSession, sql: str, params: list[Any] | None = None
) -> None:
    try:
        s.sql(sql, params)
        board.ok(agent)
    except LakewardenError as exc:
        board.refused(agent, exc)


def _writer(s: ClientSession, board: Board, stop: threading.Event, ids: Callable[[], int]) -> None:
    rng = random.Random(1)
    while not stop.wait(rng.uniform(0.1, 0.3)):
        _attempt(board, "etl-writer", s, INSERT_ORDER, _order(rng, ids(), False))


def _analyst(s: ClientSession, board: Board, stop: threading.Event) -> None:
    rng = random.Random(2)
    n = 0
    while not stop.wait(rng.uniform(0.2, 0.5)):
        n += 1
        # every 15th statement is a write the analyst's policy does not grant
        sql = (
            "DELETE FROM orders WHERE status = 'placed'"
            if n % 15 == 0
            else rng.choice(ANALYST_QUERIES)
        )
        _attempt(board, "analyst", s, sql)


def _careless(
    s: ClientSession, board: Board, stop: threading.Event, ids: Callable[[], int]
) -> None:
    rng = random.Random(3)
    n = 0
    while not stop.wait(rng.uniform(0.3, 0.7)):
        n += 1
        if n == 5:
            sql, params = "ALTER TABLE orders DROP COLUMN coupon", None
        elif n % 3 == 0:
            sql, params = FORBIDDEN[(n // 3) % len(FORBIDDEN)], None
        else:
            sql, params = INSERT_ORDER, _order(rng, ids(), True)
        _attempt(board, "careless-agent", s, sql, params)


def _age(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return f"{max(0.0, time.time() - epoch):.1f}s"


def _view(client: Client, board: Board, started: float) -> Group:
    health = Table(title="table health", title_justify="left")
    for name in (
        "table",
        "rows",
        "cols",
        "last writer",
        "last write",
        "event lag",
        "worst null ratio",
        "schema changes",
    ):
        health.add_column(name)
    for t in client.tables():
        ratios = [(c["null_ratio"], c["name"]) for c in t["columns"]]
        worst = max(ratios) if ratios else (0.0, "-")
        style = "red" if worst[0] >= 0.5 else ("yellow" if worst[0] > 0.05 else "green")
        changes = ", ".join(f"{k}={v}" for k, v in sorted(t["schema_changes"].items())) or "none"
        health.add_row(
            t["table"],
            f"{t['rows']:,}",
            str(len(t["columns"])),
            t["last_writer"] or "-",
            _age(t["last_modified"]),
            _age(t["last_event_time"]),
            Text(f"{worst[0]:.1%} ({worst[1]})", style=style),
            changes,
        )
    agents = Table(title="agents", title_justify="left")
    for name in ("agent", "statements", "refused"):
        agents.add_column(name)
    with board.lock:
        for name in AGENTS:
            agents.add_row(
                name,
                str(board.statements[name]),
                Text(str(board.refusals[name]), style="red" if board.refusals[name] else ""),
            )
        last = board.last_refusal
    footer = Text(
        f"running {time.monotonic() - started:.0f}s   last refusal: {last or '-'}", style="dim"
    )
    return Group(health, agents, footer)


def run_demo(
    directory: Path,
    *,
    port: int = 7117,
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
    (directory / "policy.yaml").write_text(POLICY, encoding="utf-8")
    token_file = directory / "demo-tokens.env"
    token_file.write_text(
        "".join(f"{AGENTS[a]}={t}\n" for a, t in tokens.items()), encoding="utf-8"
    )
    token_file.chmod(0o600)

    warden = lakewarden.open(directory, policy=directory / "policy.yaml")
    server = ServerThread(warden, port=port)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    clients = {agent: Client(f"http://127.0.0.1:{port}", token=tokens[agent]) for agent in AGENTS}
    try:
        server.start()
        console.print(f"[bold]lakewarden demo[/]: lake {directory.resolve()}")
        console.print(f"  REST     {server.url}/v1/sql   (tokens in {token_file})")
        console.print(f"  MCP      {server.url}/mcp/")
        console.print(f"  metrics  {server.url}/metrics")
        clients["etl-writer"].session().sql(CREATE_ORDERS)
        counter = iter(range(1, 10**12))
        id_lock = threading.Lock()

        def next_id() -> int:
            with id_lock:
                return next(counter)

        board = Board()
        targets: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
            (_writer, (clients["etl-writer"].session(), board, stop, next_id)),
            (_analyst, (clients["analyst"].session(), board, stop)),
            (_careless, (clients["careless-agent"].session(), board, stop, next_id)),
        ]
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            threads.append(thread)
        started = time.monotonic()
        deadline = None if duration is None else started + duration
        view = clients["analyst"]
        with Live(_view(view, board, started), console=console, refresh_per_second=4) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                live.update(_view(view, board, started))
    except KeyboardInterrupt:
        console.print("stopping (Ctrl-C)")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for client in clients.values():
            client.close()
        server.stop()
        warden.close()
    console.print(
        f"\ndone. Try: lakewarden snapshots --lake {directory}   "
        f"lakewarden check orders --lake {directory}"
    )
