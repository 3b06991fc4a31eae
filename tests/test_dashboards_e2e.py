"""End to end: a real ``lakewarden serve``, a real Prometheus loading the shipped rules, an agent
workload over REST, then every query of every shipped dashboard must return data and the alerts
must fire.

Prometheus scrapes the sidecar every second and evaluates the rules every second. The sidecar
exports every metric the dashboards and rules name, so nothing is excused: an empty panel, a
recording rule without series, an alert that does not fire, or a label no series carries fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lakewarden.wire import AGENT_HEADER
from prom_helpers import (
    DESIGN_METRICS,
    GROUPING,
    HISTOGRAM_SUFFIXES,
    PROMETHEUS_DIR,
    PanelQuery,
    Prometheus,
    alert_rules,
    dashboards,
    free_port,
    metric_names,
    panel_queries,
    prometheus,
    recording_rules,
    stop_process,
    substitute,
    wait_for,
)

pytestmark = pytest.mark.slow

SLA_S = 3
# The anomaly settings are the policy's own: three loads of training, and no week of warm-up for
# the volume model (a table written for a few seconds has no daily or weekly rhythm to learn), so
# both score gauges exist within the workload and the sloppy agent's load is a volume anomaly.
POLICY = f"""
version: 1
mode: enforce
agents:
  writer: {{read: ["*"], write: ["*"], ddl: true}}
  analyst: {{read: ["*"]}}
  careless: {{read: ["*"], write: [orders], ddl: true}}
  sloppy: {{read: ["*"], write: [orders], mode: warn}}   # violations flagged, not blocked
tables:
  orders:
    event_time: updated_at
    freshness_sla: {SLA_S}s
    volume: {{max_rows_per_write: 50}}
    columns:
      id: {{nullable: false}}
      email: {{max_null_ratio: 0.2}}
    anomaly:
      volume: {{min_training: 3, warmup: 0s}}
      freshness: {{min_training: 3}}
  customers:
    freshness_sla: 1h
"""
ORDERS_STALE = (
    "time() - max(lakewarden_table_last_modified_timestamp_seconds"
    f'{{db_collection_name="orders"}}) > {SLA_S + 0.5}'
)
# What the dashboards' variables are set to: the careless agent does a bit of everything.
VARIABLES = {"datasource": "", "job": "lakewarden", "table": "orders", "agent": "careless"}


@dataclass
class Stack:
    sidecar: subprocess.Popen[bytes]
    prom: Prometheus
    exported: set[str]  # sample names on the sidecar's /metrics after the workload


# --- the stack --------------------------------------------------------------------------------


def start_sidecar(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP")}
    command = [sys.executable, "-m", "lakewarden.intake.cli", "serve", "--lake", str(tmp / "lake")]
    command += ["--policy", str(policy), "--host", "127.0.0.1", "--port", str(port)]
    with (tmp / "sidecar.log").open("wb") as log:  # the child keeps its own handle
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def fast_rules(workdir: Path) -> list[str]:
    """Copies of the shipped rule files with every ``for:`` cut to 1s.

    The shipped rules wait minutes before firing (e.g. ``for: 5m`` past a table's SLA); the test
    keeps their expressions and only shortens that wait, so that it runs in seconds.
    """
    shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["rule_files"]
    copies = []
    for name in shipped:
        source = PROMETHEUS_DIR / name
        copy = workdir / source.name
        copy.write_text(re.sub(r"(?m)^(\s+for:) .+$", r"\1 1s", source.read_text()))
        copies.append(str(copy))
    return copies


def prometheus_config(target: str, workdir: Path) -> dict[str, Any]:
    """The shipped config's lakewarden job pointed at the test sidecar, scraping every second."""
    shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "lakewarden")
    job = {**job, "static_configs": [{"targets": [target]}]}
    fast = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    return {"global": fast, "rule_files": fast_rules(workdir), "scrape_configs": [job]}


class Agents:
    """Agents calling the REST API: the policy has no tokens, so on loopback a header names them."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def sql(self, agent: str, statement: str, expect: int | None = 200) -> int:
        response = self.http.post("/v1/sql", json={"sql": statement}, headers={AGENT_HEADER: agent})
        if expect is not None:
            assert response.status_code == expect, f"{agent}: {statement}: {response.text}"
        return response.status_code


def rows(first: int, count: int, email: str | None = "x@example.com", id_: bool = True) -> str:
    mail = f"'{email}'" if email else "NULL"
    values = (f"({i if id_ else 'NULL'}, {mail}, now())" for i in range(first, first + count))
    return "INSERT INTO orders VALUES " + ", ".join(values)


def workload(agents: Agents) -> None:
    """Writes, reads, denials, failures, gate-blocked and null-heavy writes, schema changes.

    The repeated denials and blocks come after a scrape, so that their counters increase inside
    Prometheus (a counter's first sample is not an increase).
    """
    sql = agents.sql
    sql("writer", "CREATE TABLE orders (id BIGINT, email VARCHAR, updated_at TIMESTAMP)")
    sql("writer", "CREATE TABLE customers (id BIGINT, name VARCHAR)")
    sql("writer", "INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace')")
    for batch in range(6):  # a regular history for the anomaly scores
        sql("writer", rows(batch * 5, 5))
        time.sleep(0.2)
    sql("analyst", "SELECT count(*) FROM orders")
    sql("analyst", rows(900, 1), expect=403)  # analysts may not write
    sql("careless", rows(100, 5))
    for round_ in range(2):
        if round_:
            time.sleep(1.5)
        sql("careless", "ATTACH 'elsewhere.db' AS elsewhere", expect=403)  # never for agents
        sql("careless", "SELECT * FROM no_such_table", expect=422)
        sql("careless", rows(200 + 100 * round_, 60), expect=409)  # > max_rows_per_write
        sql("careless", rows(0, 1, email=None, id_=False), expect=409)  # NULL id: not_null:id
    # Warn mode: committed, with nulls, and 30 times the usual rows: a volume anomaly. It is the
    # eighth load of orders: from the ninth on, a table written this often is judged per hour of
    # rows instead of per write, and no hour would have closed yet to give a verdict.
    sql("sloppy", rows(500, 150, email=None))
    sql("careless", "ALTER TABLE orders ADD COLUMN note VARCHAR")
    time.sleep(2.5)  # a gap ten times the usual: a freshness anomaly
    sql("careless", "ALTER TABLE orders ADD COLUMN channel VARCHAR")  # the last write


def exported_samples(url: str) -> set[str]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sidecar = start_sidecar(tmp, port)
    try:

        def sidecar_ready() -> bool:
            if sidecar.poll() is not None:
                pytest.fail(f"lakewarden serve exited: {(tmp / 'sidecar.log').read_text()}")
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200

        wait_for("lakewarden serve to be ready", sidecar_ready, timeout_s=60)
        with prometheus(prometheus_config(f"127.0.0.1:{port}", tmp), tmp / "prometheus") as prom:
            wait_for("the first scrape", lambda: prom.query('up{job="lakewarden"} == 1'), 15)
            with httpx.Client(base_url=url, timeout=30) as http:
                workload(Agents(http))
            exported = exported_samples(url)
            # Stop writing and wait until Prometheus sees orders past its SLA.
            wait_for("orders to go stale", lambda: prom.query(ORDERS_STALE), timeout_s=20)
            yield Stack(sidecar, prom, exported)
    finally:
        stop_process(sidecar)


# --- dashboards -------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", sorted(DESIGN_METRICS))
def test_sidecar_exports_every_design_metric(stack: Stack, metric: str) -> None:
    samples = {metric, *(metric + suffix for suffix in HISTOGRAM_SUFFIXES)}
    assert samples & stack.exported, f"{metric} is not on the sidecar's /metrics"


FALLBACK = " or vector(0)"


def data(stack: Stack, expr: str) -> list[Any]:
    """``expr``'s result, asked again for a few seconds while it is empty: on a loaded machine
    one scrape can time out, and Prometheus then marks every series of the target stale until
    the next scrape succeeds."""
    deadline = time.monotonic() + 10
    while True:
        found = stack.prom.query(expr)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.parametrize("query", panel_queries(), ids=lambda q: q.id)
def test_every_panel_query_returns_data(stack: Stack, query: PanelQuery) -> None:
    expr = substitute(query.expr, VARIABLES)
    assert data(stack, expr), f"{query.id}: no data for {expr}"
    if expr.endswith(FALLBACK):
        # A stat that shows 0 when nothing matches has data even if its metric were misspelt:
        # the workload leaves a stale table and failing checks, so the real part must match too.
        real = expr.removesuffix(FALLBACK)
        assert data(stack, real), f"{query.id}: only the fallback has data; nothing for {real}"


def labels_used(expr: str) -> set[str]:
    """Labels an expression groups or matches on: by, without, on, ignoring, group_*."""
    return {
        label.strip()
        for clause in GROUPING.finditer(expr)
        for label in clause.group(0).split("(", 1)[1].rstrip(")").split(",")
        if label.strip()
    }


def rule_exprs() -> list[Any]:
    rules = {**recording_rules(), **alert_rules()}
    return [pytest.param(rule["expr"], "", id=name) for name, rule in rules.items()]


def panel_exprs() -> list[Any]:
    return [pytest.param(q.expr, q.legend, id=q.id) for q in panel_queries()]


@pytest.mark.parametrize(("expr", "legend"), panel_exprs() + rule_exprs())
def test_every_label_a_query_groups_on_or_shows_is_exported(
    stack: Stack, expr: str, legend: str
) -> None:
    # Grouping on a label no series has still returns data (one group, the label empty), so the
    # data tests above cannot see a misspelt label: look for a series that carries it.
    expr = substitute(expr, VARIABLES)
    names = "|".join(sorted(metric_names(expr)))
    for label in sorted(labels_used(expr)):
        carried = f'group({{__name__=~"{names}", {label}!=""}})'
        assert data(stack, carried), f"no series of {names} carries label {label}"
    # A legend naming a label the series lack shows blank names.
    shown = re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)
    for series in data(stack, expr) if shown else []:
        missing = [label for label in shown if label not in series["metric"]]
        assert not missing, f"legend {legend!r}: series {series['metric']} lacks {missing}"


def variable_queries() -> list[Any]:
    return [
        pytest.param(variable, id=f"{board['uid']}/${variable['name']}")
        for board in dashboards().values()
        for variable in board["templating"]["list"]
        if variable["type"] == "query"
    ]


@pytest.mark.parametrize("variable", variable_queries())
def test_every_template_variable_offers_the_workloads_values(
    stack: Stack, variable: dict[str, Any]
) -> None:
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
    assert match, f"${variable['name']} is not a label_values() query"
    selector = substitute(match.group(1), VARIABLES)
    values = stack.prom.label_values(match.group(2), selector)
    assert VARIABLES[variable["name"]] in values, f"${variable['name']} offers only {values}"


# --- rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("record", sorted(recording_rules()))
def test_every_recording_rule_produces_series(stack: Stack, record: str) -> None:
    wait_for(f"{record} to have series", lambda: stack.prom.query(record), 10)


ORDERS = {"db_collection_name": "orders"}
FIRING = {
    "LakewardenTableStale": ORDERS,
    "LakewardenNullRatioHigh": {**ORDERS, "lakewarden_column_name": "email"},
    "LakewardenSchemaDrift": {**ORDERS, "lakewarden_change": "column_added"},
    "LakewardenAgentDenied": {"gen_ai_agent_name": "careless"},
    "LakewardenQualityGateBlocking": {**ORDERS, "gen_ai_agent_name": "careless"},
    "LakewardenVolumeAnomaly": ORDERS,
    "LakewardenFreshnessAnomaly": ORDERS,
}


def test_the_workload_exercises_every_alert() -> None:
    # LakewardenSidecarDown has its own test, the last of the module; every other alert must fire.
    assert set(alert_rules()) == {*FIRING, "LakewardenSidecarDown"}


@pytest.mark.parametrize("alert", FIRING)
def test_alert_fires_for_the_workload(stack: Stack, alert: str) -> None:
    labels = FIRING[alert]

    def firing() -> list[dict[str, Any]]:
        return [a for a in stack.prom.alerts(alert) if labels.items() <= a["labels"].items()]

    alerts = wait_for(f"{alert} {labels} to fire", firing, timeout_s=20)
    description = alerts[0]["annotations"]["description"]
    # Go templates render a label the alert lacks as "<no value>" instead of failing.
    assert description and "<no value>" not in description, description


def test_tables_within_their_sla_and_a_live_sidecar_raise_nothing(stack: Stack) -> None:
    stale = {a["labels"]["db_collection_name"] for a in stack.prom.alerts("LakewardenTableStale")}
    pending = stack.prom.alerts("LakewardenTableStale", state="pending")
    assert "customers" not in stale | {a["labels"]["db_collection_name"] for a in pending}
    assert stack.prom.alerts("LakewardenSidecarDown") == []
    assert stack.prom.alerts("LakewardenSidecarDown", state="pending") == []


def test_sidecar_down_fires_when_the_sidecar_stops(stack: Stack) -> None:
    # Last test of the module: it stops the sidecar for good.
    stop_process(stack.sidecar)
    alerts = wait_for(
        "LakewardenSidecarDown", lambda: stack.prom.alerts("LakewardenSidecarDown"), 20
    )
    assert alerts[0]["labels"]["severity"] == "critical"
    assert alerts[0]["labels"]["job"] == "lakewarden"
