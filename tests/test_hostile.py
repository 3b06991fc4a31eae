"""The hostile corpus (cases/hostile.yaml) through the SDK, REST and MCP, with a policy.

Every case must be refused with its error code on all three channels, no response may carry a
secret value, and the lake must be as it was: checked after every case on the running server
(snapshot, options), and once more at the end by reopening the lake from disk (snapshot count,
audit count, table contents, options, files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import yaml
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

import lakewarden
from lakewarden.analysis import analyze
from lakewarden.store import catalog, extensions

from server_helpers import Served, serve

CASES = Path(__file__).parent / "cases"
POLICY = CASES / "hostile_policy.yaml"
AGENTS = {
    "analyst": "LW_HOSTILE_ANALYST",
    "writer": "LW_HOSTILE_WRITER",
    "builder": "LW_HOSTILE_BUILDER",
}
CODES = {"denied": "policy_denied", "invalid": "invalid_sql"}
STATUS = {"policy_denied": 403, "invalid_sql": 400}
MARKER = "zz-secret-marker"
SALARY = 987654321


def _corpus() -> list[dict[str, Any]]:
    data = yaml.safe_load((CASES / "hostile.yaml").read_text())
    cases: list[dict[str, Any]] = []
    for case in data["statements"]:
        case = dict(case)
        if "repeat" in case:
            r = case.pop("repeat")
            case["sql"] = (
                r["text"].replace("{x}", r["x"] * r["count"]).replace("{y}", r["y"] * r["count"])
            )
        cases.append(case)
    for name, args in data["table_functions"].items():
        for template in data["templates"]:
            case = {
                "id": f"tf-{template['id']}-{name}",
                "sql": template["sql"].replace("{call}", f"{name}({args})"),
            }
            if "agent" in template:
                case["agent"] = template["agent"]
            cases.append(case)
    return cases


CORPUS = _corpus()


def test_corpus_is_large_and_ids_are_unique() -> None:
    assert len(CORPUS) >= 300
    assert len({c["id"] for c in CORPUS}) == len(CORPUS)


@dataclass
class Hostile:
    lake: Path
    served: Served
    rest: dict[str, httpx.Client]
    mcp: dict[str, Client]
    portal: BlockingPortal
    baseline: dict[str, Any]
    stack: contextlib.ExitStack
    options: list[Any] = field(default_factory=list)


def _seed(lake: Path) -> None:
    with lakewarden.open(lake, telemetry=lakewarden.Telemetry(env={})) as w, w.session("seed") as s:
        s.sql("CREATE TABLE public_orders (id BIGINT, amount DOUBLE)")
        s.sql("INSERT INTO public_orders SELECT i, i * 1.5 FROM range(1, 21) r(i)")
        s.sql("CREATE TABLE public_scratch (v BIGINT)")
        s.sql("INSERT INTO public_scratch VALUES (1), (2), (3), (4)")
        s.sql("CREATE TABLE secret_salaries (name VARCHAR, salary BIGINT)")
        s.sql(f"INSERT INTO secret_salaries VALUES ('{MARKER}', {SALARY})")
        s.sql("CREATE VIEW public_orders_v AS SELECT * FROM public_orders")
        s.sql("CREATE VIEW secret_view AS SELECT * FROM secret_salaries")
        s.sql("CREATE SCHEMA scratch")


def reopened(lake: Path) -> dict[str, Any]:
    """Everything an attack could change, read from a fresh process-level open of the files."""
    con = duckdb.connect(":memory:")
    try:
        extensions.load(con, "ducklake")
        con.execute(f"ATTACH 'ducklake:{lake}/meta.ducklake' AS lake (READ_ONLY)")
        digest = hashlib.sha256()
        for table in ("public_orders", "public_scratch", "secret_salaries"):
            rows = con.execute(f"SELECT * FROM lake.{table} ORDER BY ALL").fetchall()
            digest.update(repr(rows).encode())
        return {
            "snapshots": con.execute("SELECT count(*) FROM lake.snapshots()").fetchone(),
            "commits": con.execute(
                "SELECT list(author ORDER BY snapshot_id) FROM lake.snapshots()"
            ).fetchone(),
            "audit": con.execute("SELECT count(*) FROM lake.lakewarden.audit").fetchone(),
            "options": con.execute("SELECT * FROM lake.options() ORDER BY ALL").fetchall(),
            "objects": con.execute(
                "SELECT schema_name, table_name, comment FROM duckdb_tables() "
                "WHERE database_name = 'lake' UNION ALL "
                "SELECT schema_name, view_name, comment FROM duckdb_views() "
                "WHERE database_name = 'lake' UNION ALL "
                "SELECT schema_name, function_name, NULL FROM duckdb_functions() "
                "WHERE database_name = 'lake' ORDER BY ALL"
            ).fetchall(),
            "schemas": con.execute(
                "SELECT schema_name FROM duckdb_schemas() WHERE database_name = 'lake' ORDER BY 1"
            ).fetchall(),
            "content": digest.hexdigest(),
            "files": _files(lake),
        }
    finally:
        con.close()


def _files(lake: Path) -> list[tuple[str, int]]:
    """Data files with sizes, and every other file's name (the catalog and state files change
    size when they checkpoint, which is not an attack)."""
    out = []
    for path in sorted(lake.rglob("*")):
        if not path.is_file() or ".lakewarden-tmp" in path.parts:
            continue
        rel = str(path.relative_to(lake))
        if rel.startswith("lakewarden-state") or rel.startswith("meta.ducklake"):
            out.append((rel.split(".wal")[0], -1))
        else:
            out.append((rel, path.stat().st_size))
    return sorted(set(out))


@contextlib.asynccontextmanager
async def _mcp_client(url: str, token: str) -> AsyncIterator[Client]:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(f"{url}/mcp/", http_client=http)) as client:
        yield client


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    lake = tmp_path_factory.mktemp("hostile") / "lake"
    _seed(lake)
    baseline = reopened(lake)
    tokens = {agent: secrets.token_urlsafe(16) for agent in AGENTS}
    saved = {env: os.environ.get(env) for env in AGENTS.values()}
    os.environ.update({AGENTS[a]: t for a, t in tokens.items()})
    stack = contextlib.ExitStack()
    with stack:
        served = stack.enter_context(serve(lake, policy=POLICY))
        portal = stack.enter_context(start_blocking_portal())
        rest = {
            agent: stack.enter_context(
                httpx.Client(
                    base_url=served.url,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=60,
                )
            )
            for agent, token in tokens.items()
        }
        mcp = {
            agent: stack.enter_context(
                portal.wrap_async_context_manager(_mcp_client(served.url, token))
            )
            for agent, token in tokens.items()
        }
        cur = served.warden.engine.cursor()
        options = cur.execute("SELECT * FROM lake.options() ORDER BY ALL").fetchall()
        cur.close()
        yield Hostile(lake, served, rest, mcp, portal, baseline, stack, options)
    for env, value in saved.items():
        if value is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = value


def _sdk(h: Hostile, agent: str, case: dict[str, Any]) -> lakewarden.LakewardenError:
    with h.served.warden.session(agent) as s:
        try:
            result = s.batch(case["batch"]) if "batch" in case else s.sql(case["sql"])
        except lakewarden.LakewardenError as exc:
            return exc
    raise AssertionError(f"SDK: not refused, got {result.kind} {result.rows[:3]!r}")


def _rest(h: Hostile, agent: str, case: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = {"statements": case["batch"]} if "batch" in case else {"sql": case["sql"]}
    response = h.rest[agent].post("/v1/sql", json=body)
    assert MARKER not in response.text and str(SALARY) not in response.text
    return response.status_code, response.json()


def _mcp(h: Hostile, agent: str, case: dict[str, Any]) -> dict[str, Any]:
    if "batch" in case:
        tool, sql = "execute", case["batch"]
    else:
        sql = case["sql"]
        try:
            tool = "query" if analyze(sql).kind == "read" else "execute"
        except lakewarden.InvalidSQL:
            tool = "query"
    result = h.portal.call(h.mcp[agent].call_tool, tool, {"sql": sql})
    text = json.dumps([c.model_dump() for c in result.content])
    assert MARKER not in text and str(SALARY) not in text
    assert result.is_error, f"MCP: not refused: {text[:300]}"
    return dict(json.loads(result.content[0].text)["error"])


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in CORPUS])
def test_hostile_case_is_refused_everywhere(hostile: Hostile, case: dict[str, Any]) -> None:
    case = {
        k: (v.replace("{lake}", str(hostile.lake)) if isinstance(v, str) else v)
        for k, v in case.items()
    }
    if "batch" in case:
        case["batch"] = [s.replace("{lake}", str(hostile.lake)) for s in case["batch"]]
    agent = case.get("agent", "analyst")
    code = CODES[case.get("error", "denied")]
    cur = hostile.served.warden.engine.cursor()
    try:
        before = catalog.current_snapshot(cur)

        error = _sdk(hostile, agent, case)
        assert error.code == code, error.to_dict()
        assert MARKER not in error.message and str(SALARY) not in error.message

        status, body = _rest(hostile, agent, case)
        assert (status, body["error"]["code"]) == (STATUS[code], code), body

        assert _mcp(hostile, agent, case)["code"] == code

        assert catalog.current_snapshot(cur) == before, "something was committed"
        options = cur.execute("SELECT * FROM lake.options() ORDER BY ALL").fetchall()
        assert options == hostile.options, "lake options changed"
    finally:
        cur.close()


def test_zz_lake_is_unchanged_after_reopening(hostile: Hostile) -> None:
    """Runs last in this module: stops the server, then reopens the lake from its files."""
    hostile.stack.close()
    assert reopened(hostile.lake) == hostile.baseline
