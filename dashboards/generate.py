"""Generate lakewarden's Grafana dashboards: ``python dashboards/generate.py``.

The JSON files next to this script are its output and are committed, so that Grafana provisioning
(dashboards/provisioning/dashboards.yaml) can load them as they are; tests/test_deploy_files.py
fails when they are not what this script generates. Edit this script, never the JSON.

Every query goes through the ``datasource`` variable (a Prometheus data source), uses
``$__rate_interval`` in rates and ``$__range`` for "in the selected time range" totals, and names
only the metrics of DESIGN.md (Telemetry) and ``up``. Table series are aggregated by
``db_collection_name`` with max: sidecars that share a lake report the same table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}

Json = dict[str, Any]
Query = tuple[str, str]  # (PromQL, legend)

# --- PromQL -----------------------------------------------------------------------------------

JOB = 'job=~"$job"'
TABLE = f'{JOB}, db_collection_name="$table"'
AGENT = f'{JOB}, gen_ai_agent_name="$agent"'


def sel(metric: str, labels: str, extra: str = "") -> str:
    return f"{metric}{{{labels}{', ' + extra if extra else ''}}}"


def agg(op: str, by: str, expr: str) -> str:
    return f"{op} by ({by}) ({expr})" if by else f"{op}({expr})"


def rate(metric: str, labels: str, by: str = "", extra: str = "") -> str:
    """Per-second rate summed by ``by``."""
    return agg("sum", by, f"rate({sel(metric, labels, extra)}[$__rate_interval])")


def changes(metric: str, labels: str, by: str = "") -> str:
    """Counter increase per ``$__rate_interval`` (for bar charts of events)."""
    return agg("sum", by, f"increase({sel(metric, labels)}[$__rate_interval])")


def schema_changes(labels: str, by: str) -> str:
    """Like :func:`changes` for schema changes, which every sidecar of a lake counts (each sees
    every commit): per table and kind the largest sidecar's count, not their sum."""
    increase = f"increase({sel('lakewarden_schema_changes_total', labels)}[$__rate_interval])"
    return agg("sum", by, agg("max", "db_collection_name, lakewarden_change", increase))


def failing_checks(labels: str, by: str = "") -> str:
    """Checks failing now. Every sidecar of a lake reports each check: a check counts once,
    as failing when any sidecar sees it fail."""
    checks = sel("lakewarden_check_passing", labels)
    passing = agg("min", "db_collection_name, lakewarden_check_name", checks)
    return agg("sum", by, f"1 - {passing}")


def in_range(metric: str, labels: str, by: str = "", extra: str = "") -> str:
    """Total increase over the dashboard's time range."""
    return agg("sum", by, f"increase({sel(metric, labels, extra)}[$__range])")


def quantile(q: float, labels: str, by: str = "") -> str:
    """The q-quantile of statement durations, by ``by``."""
    buckets = sel("db_client_operation_duration_seconds_bucket", labels)
    rates = agg("sum", f"le, {by}" if by else "le", f"rate({buckets}[$__rate_interval])")
    return f"histogram_quantile({q}, {rates})"


def table_max(metric: str, labels: str = JOB) -> str:
    return agg("max", "db_collection_name", sel(metric, labels))


LAST_WRITE = table_max("lakewarden_table_last_modified_timestamp_seconds")
SLA = table_max("lakewarden_table_freshness_sla_seconds")
STALENESS = f"time() - {LAST_WRITE}"
CHECKS = sel("lakewarden_check_passing", JOB)
TABLE_HEALTH = agg("min", "db_collection_name", CHECKS)  # 1 while every check passes
ERRORS = 'error_type!=""'

# --- panels -----------------------------------------------------------------------------------


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


GREEN = thresholds((None, "green"))
ALERTING = thresholds((None, "green"), (1, "red"))
WARNING = thresholds((None, "green"), (1, "orange"))
PASS_FAIL = [
    {
        "type": "value",
        "options": {
            "0": {"text": "failing", "color": "red", "index": 0},
            "1": {"text": "passing", "color": "green", "index": 1},
        },
    }
]
DASHED: list[Json] = [
    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
    {"id": "custom.fillOpacity", "value": 0},
]
TABLE_LINK = {
    "title": "Table detail",
    "url": "/d/lakewarden-table?${datasource:queryparam}&var-table=${__value.raw}",
}
AGENT_LINK = {
    "title": "Agent detail",
    "url": "/d/lakewarden-agent?${datasource:queryparam}"
    "&var-agent=${__field.labels.gen_ai_agent_name}",
}


def override(name: str, *properties: Json, regex: bool = False) -> Json:
    matcher = {"id": "byRegexp" if regex else "byName", "options": name}
    return {"matcher": matcher, "properties": list(properties)}


def prop(name: str, value: Any) -> Json:
    return {"id": name, "value": value}


def organize(renames: dict[str, str], hide: tuple[str, ...] = ("Time",)) -> Json:
    return {
        "id": "organize",
        "options": {"excludeByName": dict.fromkeys(hide, True), "renameByName": renames},
    }


def panel(kind: str, title: str, description: str, queries: list[Query], **opts: Any) -> Json:
    """A panel ``w`` x ``h`` grid units; the other ``opts`` are field defaults, options,
    overrides and transformations. :func:`layout` places it."""
    size = {"h": opts.pop("h", 8), "w": opts.pop("w", 8)}
    instant = opts.pop("instant", False)
    fmt = opts.pop("format", "time_series")
    targets = []
    for number, (expr, legend) in enumerate(queries):
        target: Json = {"datasource": DS, "refId": chr(ord("A") + number), "expr": expr}
        target.update(legendFormat=legend or "__auto", format=fmt, instant=instant)
        target["range"] = not instant
        targets.append(target)
    options = opts.pop("options", {})
    overrides = opts.pop("overrides", [])
    transformations = opts.pop("transformations", [])
    defaults = {"thresholds": opts.pop("thresholds", GREEN), **opts}
    return {
        "type": kind,
        "title": title,
        "description": description,
        "gridPos": size,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": options,
        "transformations": transformations,
    }


def stat(
    title: str, description: str, queries: list[Query], *, text: str = "value", **o: Any
) -> Json:
    """The latest value; ``text="name"`` shows the series name (legend) instead."""
    o.setdefault("noValue", "0")
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "textMode": text,
        "orientation": "auto",
    }
    return panel("stat", title, description, queries, instant=True, options=options, **o)


def timeseries(
    title: str, description: str, queries: list[Query], *, bars: bool = False, **o: Any
) -> Json:
    o["custom"] = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "thresholdsStyle": {"mode": o.pop("thresholds_style", "off")},
    }
    o["options"] = {
        "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel("timeseries", title, description, queries, **o)


def table(title: str, description: str, queries: list[Query], **o: Any) -> Json:
    o["options"] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    return panel("table", title, description, queries, instant=True, format="table", **o)


def bargauge(title: str, description: str, queries: list[Query], **o: Any) -> Json:
    o["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "orientation": "horizontal",
        "displayMode": "gradient",
        "showUnfilled": True,
    }
    return panel("bargauge", title, description, queries, instant=True, **o)


def state_timeline(title: str, description: str, queries: list[Query], **o: Any) -> Json:
    o["options"] = {
        "showValue": "never",
        "mergeValues": True,
        "alignValue": "left",
        "legend": {"displayMode": "list", "placement": "bottom"},
    }
    return panel("state-timeline", title, description, queries, **o)


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


# --- layout and dashboard ---------------------------------------------------------------------


def layout(panels: list[Json]) -> list[Json]:
    """Number the panels and place them left to right, wrapping at 24 columns; a row starts a
    line of its own."""
    placed: list[Json] = []
    x = y = line = 0
    for number, item in enumerate(panels, start=1):
        if item["type"] == "row":
            y, x, line = y + line, 0, 0
            placed.append({**item, "id": number, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
            y += 1
            continue
        w, h = item["gridPos"]["w"], item["gridPos"]["h"]
        if x + w > 24:
            y, x, line = y + line, 0, 0
        placed.append({**item, "id": number, "gridPos": {"h": h, "w": w, "x": x, "y": y}})
        x, line = x + w, max(line, h)
    return placed


def query_variable(name: str, label: str, query: str, *, all_jobs: bool = False) -> Json:
    variable: Json = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "regex": "",
        "current": {},
        "options": [],
        "hide": 0,
        "refresh": 2,  # on time-range change: new tables and agents appear
        "sort": 1,
        "includeAll": all_jobs,
        "multi": all_jobs,
    }
    if all_jobs:
        variable["allValue"] = ".*"
        variable["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return variable


DATASOURCE_VARIABLE = {
    "name": "datasource",
    "label": "Data source",
    "type": "datasource",
    "query": "prometheus",
    "regex": "",
    "current": {},
    "options": [],
    "hide": 0,
    "refresh": 1,
    "includeAll": False,
    "multi": False,
}
JOB_VARIABLE = query_variable(
    "job", "Job", "label_values(lakewarden_build_info, job)", all_jobs=True
)


def dashboard(
    uid: str, title: str, description: str, variables: list[Json], panels: list[Json]
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["lakewarden"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "title": "lakewarden",
                "type": "dashboards",
                "tags": ["lakewarden"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "templating": {"list": [DATASOURCE_VARIABLE, JOB_VARIABLE, *variables]},
        "panels": layout(panels),
    }


# --- fleet overview ---------------------------------------------------------------------------


def fleet() -> Json:
    failing = failing_checks(JOB, "db_collection_name")
    tables = table(
        "Tables",
        "Every table with its size, time since its last write, its freshness SLA and the number "
        "of its checks that fail. Click a table for its detail dashboard.",
        [
            (table_max("lakewarden_table_rows"), ""),
            (table_max("lakewarden_table_columns"), ""),
            (STALENESS, ""),
            (SLA, ""),
            (failing, ""),
        ],
        transformations=[
            {"id": "merge", "options": {}},
            organize(
                {
                    "db_collection_name": "table",
                    "Value #A": "rows",
                    "Value #B": "columns",
                    "Value #C": "since last write",
                    "Value #D": "freshness SLA",
                    "Value #E": "failing checks",
                }
            ),
        ],
        overrides=[
            override("since last write|freshness SLA", prop("unit", "s"), regex=True),
            override(
                "failing checks",
                prop("custom.cellOptions", {"type": "color-background"}),
                prop("thresholds", ALERTING),
            ),
            override("table", prop("links", [TABLE_LINK])),
        ],
    )
    failing_table = table(
        "Failing checks",
        "Every check that fails now, by table.",
        [(f"{agg('min', 'db_collection_name, lakewarden_check_name', CHECKS)} == 0", "")],
        transformations=[
            organize(
                {"db_collection_name": "table", "lakewarden_check_name": "check"},
                hide=("Time", "Value"),
            )
        ],
        overrides=[override("table", prop("links", [TABLE_LINK]))],
    )
    denied = 'lakewarden_decision="denied"'
    return dashboard(
        "lakewarden-fleet",
        "lakewarden / Fleet overview",
        "Health of every governed table and the activity of every agent, across sidecars.",
        [],
        [
            row("Table health"),
            stat(
                "Tables tracked",
                "Tables the sidecars track.",
                [(f"count({table_max('lakewarden_table_rows')})", "")],
                w=4,
                h=4,
            ),
            stat(
                "Tables failing a check",
                "Tables with at least one failing contract or anomaly check.",
                [
                    (
                        f"count({TABLE_HEALTH} == 0) or vector(0)",
                        "",
                    )
                ],
                thresholds=ALERTING,
                w=4,
                h=4,
            ),
            stat(
                "Stale tables",
                "Tables not written within their freshness SLA (alert LakewardenTableStale).",
                # "or vector(0)": no stale table is a 0 on the panel, not "No data"
                [(f"count(({STALENESS}) > on (db_collection_name) {SLA}) or vector(0)", "")],
                thresholds=ALERTING,
                w=4,
                h=4,
            ),
            stat(
                "Writes blocked",
                "Writes rolled back by the quality gate in the selected time range.",
                [(in_range("lakewarden_quality_gate_blocks_total", JOB), "")],
                decimals=0,
                thresholds=WARNING,
                w=4,
                h=4,
            ),
            stat(
                "Statements denied",
                "Statements refused by policy in the selected time range.",
                [(in_range("lakewarden_statements_total", JOB, extra=denied), "")],
                decimals=0,
                thresholds=WARNING,
                w=4,
                h=4,
            ),
            stat(
                "Sidecars up",
                "Scraped sidecars answering now, out of all scraped sidecars.",
                [(f"sum(up{{{JOB}}})", "up"), (f"count(up{{{JOB}}})", "targets")],
                text="value_and_name",
                w=4,
                h=4,
            ),
            tables,
            bargauge(
                "Freshness SLA used",
                "Time since each table's last write as a share of its freshness SLA; above "
                "100% the table is stale.",
                [(f"({STALENESS}) / on (db_collection_name) {SLA}", "{{db_collection_name}}")],
                unit="percentunit",
                min=0,
                max=1.5,
                thresholds=thresholds((None, "green"), (0.8, "orange"), (1, "red")),
                w=10,
                h=9,
            ),
            state_timeline(
                "Table health over time",
                "Passing while every check of the table passes.",
                [(TABLE_HEALTH, "{{db_collection_name}}")],
                mappings=PASS_FAIL,
                thresholds=thresholds((None, "red"), (1, "green")),
                w=14,
                h=8,
            ),
            failing_table,
            row("Writes"),
            timeseries(
                "Rows written by table",
                "Rows inserted, updated or deleted per second by committed writes.",
                [
                    (
                        rate("lakewarden_rows_written_total", JOB, "db_collection_name"),
                        "{{db_collection_name}}",
                    )
                ],
                unit="short",
                w=8,
                h=8,
            ),
            timeseries(
                "Blocked writes by table and check",
                "Writes per second rolled back by the quality gate, by the check they failed.",
                [
                    (
                        rate(
                            "lakewarden_quality_gate_blocks_total",
                            JOB,
                            "db_collection_name, lakewarden_check_name",
                        ),
                        "{{db_collection_name}} {{lakewarden_check_name}}",
                    )
                ],
                unit="short",
                w=8,
                h=8,
            ),
            timeseries(
                "Schema changes",
                "Columns added, removed or retyped (alert LakewardenSchemaDrift).",
                [
                    (
                        schema_changes(JOB, "db_collection_name, lakewarden_change"),
                        "{{db_collection_name}} {{lakewarden_change}}",
                    )
                ],
                bars=True,
                decimals=0,
                w=8,
                h=8,
            ),
            row("Agents"),
            timeseries(
                "Statements by agent",
                "Statements per second, every decision.",
                [
                    (
                        rate("lakewarden_statements_total", JOB, "gen_ai_agent_name"),
                        "{{gen_ai_agent_name}}",
                    )
                ],
                unit="reqps",
                links=[AGENT_LINK],
                w=8,
                h=8,
            ),
            timeseries(
                "Denied and blocked statements by agent",
                "Statements per second refused by policy (denied) or rolled back by the "
                "quality gate (blocked).",
                [
                    (
                        rate(
                            "lakewarden_statements_total",
                            JOB,
                            "gen_ai_agent_name, lakewarden_decision",
                            extra='lakewarden_decision=~"denied|blocked"',
                        ),
                        "{{gen_ai_agent_name}} {{lakewarden_decision}}",
                    )
                ],
                unit="reqps",
                links=[AGENT_LINK],
                w=8,
                h=8,
            ),
            timeseries(
                "Statement latency p95 by agent",
                "95th percentile of db.client.operation.duration: analysis, policy, "
                "execution, signals and commit.",
                [(quantile(0.95, JOB, "gen_ai_agent_name"), "{{gen_ai_agent_name}}")],
                unit="s",
                links=[AGENT_LINK],
                w=8,
                h=8,
            ),
            bargauge(
                "Denials by agent",
                "Statements refused by policy in the selected time range.",
                [
                    (
                        in_range("lakewarden_statements_total", JOB, "gen_ai_agent_name", denied),
                        "{{gen_ai_agent_name}}",
                    )
                ],
                decimals=0,
                thresholds=thresholds((None, "orange")),
                links=[AGENT_LINK],
                w=12,
                h=7,
            ),
            table(
                "Sidecar versions",
                "lakewarden versions running, by job.",
                [(agg("count", "job, version", sel("lakewarden_build_info", JOB)), "")],
                transformations=[organize({"Value": "sidecars"})],
                w=12,
                h=7,
            ),
            timeseries(
                "Telemetry dropped",
                "Spans and metric points the sidecars could not deliver to the OTLP collector "
                "(down, refusing or too slow) or dropped from full queues. Agents' "
                "statements are not affected; see docs/operations.md.",
                [
                    (
                        changes("lakewarden_telemetry_dropped_total", JOB, "lakewarden_signal"),
                        "{{lakewarden_signal}}",
                    )
                ],
                bars=True,
                decimals=0,
                w=24,
                h=6,
            ),
        ],
    )


# --- table detail -----------------------------------------------------------------------------


def table_detail() -> Json:
    table_var = query_variable(
        "table", "Table", f"label_values({sel('lakewarden_table_rows', JOB)}, db_collection_name)"
    )
    writes = sel("lakewarden_table_last_modified_timestamp_seconds", TABLE)
    last_write = f"max({writes})"
    last_event = f"max({sel('lakewarden_table_last_event_timestamp_seconds', TABLE)})"
    sla = f"max({sel('lakewarden_table_freshness_sla_seconds', TABLE)})"
    checks = sel("lakewarden_check_passing", TABLE)
    return dashboard(
        "lakewarden-table",
        "lakewarden / Table detail",
        "One table: size, freshness against its SLA, null ratios against its contract, schema "
        "changes, anomaly scores and the agents that write it.",
        [table_var],
        [
            row("$table now"),
            stat(
                "Rows",
                "Rows in the table.",
                [(f"max({sel('lakewarden_table_rows', TABLE)})", "")],
                w=4,
                h=4,
            ),
            stat(
                "Columns",
                "Columns in the table.",
                [(f"max({sel('lakewarden_table_columns', TABLE)})", "")],
                w=4,
                h=4,
            ),
            stat(
                "Since last write",
                "Time since the last committed write.",
                [(f"time() - {last_write}", "")],
                unit="s",
                w=4,
                h=4,
            ),
            stat(
                "Freshness SLA",
                "freshness_sla of the table's contract in the policy.",
                [(sla, "")],
                unit="s",
                noValue="none",
                w=4,
                h=4,
            ),
            stat(
                "Last writer",
                "The agent whose commit is the table's latest write.",
                [
                    (
                        f"topk(1, {agg('max', 'gen_ai_agent_name', writes)})",
                        "{{gen_ai_agent_name}}",
                    )
                ],
                text="name",
                noValue="-",
                w=4,
                h=4,
            ),
            stat(
                "Failing checks",
                "Checks of the table that fail now.",
                [(failing_checks(TABLE), "")],
                thresholds=ALERTING,
                w=4,
                h=4,
            ),
            row("Freshness and volume"),
            timeseries(
                "Freshness vs SLA",
                "Time since the last write and, when the contract names an event_time column, "
                "since the newest event; the dashed red line is the SLA.",
                [
                    (f"time() - {last_write}", "since last write"),
                    (
                        f"time() - {last_event}",
                        "since newest event",
                    ),
                    (sla, "SLA"),
                ],
                unit="s",
                overrides=[
                    override("SLA", prop("color", {"mode": "fixed", "fixedColor": "red"}), *DASHED)
                ],
                w=12,
                h=8,
            ),
            timeseries(
                "Rows",
                "Rows in the table over time.",
                [(f"max({sel('lakewarden_table_rows', TABLE)})", "rows")],
                unit="short",
                w=12,
                h=8,
            ),
            row("Quality"),
            timeseries(
                "Null ratio by column vs contract max",
                "Share of NULLs in each column; dashed lines are the max_null_ratio of the "
                "contract (alert LakewardenNullRatioHigh).",
                [
                    (
                        agg(
                            "max",
                            "lakewarden_column_name",
                            sel("lakewarden_column_null_ratio", TABLE),
                        ),
                        "{{lakewarden_column_name}}",
                    ),
                    (
                        agg(
                            "max",
                            "lakewarden_column_name",
                            sel("lakewarden_column_null_ratio_max", TABLE),
                        ),
                        "{{lakewarden_column_name}} max",
                    ),
                ],
                unit="percentunit",
                min=0,
                max=1,
                overrides=[override(".* max$", *DASHED, regex=True)],
                w=14,
                h=9,
            ),
            table(
                "Checks",
                "Contract and anomaly checks: freshness, schema, volume_anomaly, "
                "freshness_anomaly, null_ratio:<column>, not_null:<column>, type:<column>.",
                [(agg("max", "lakewarden_check_name", checks), "")],
                mappings=PASS_FAIL,
                transformations=[organize({"lakewarden_check_name": "check", "Value": "state"})],
                overrides=[
                    override("state", prop("custom.cellOptions", {"type": "color-background"}))
                ],
                w=10,
                h=9,
            ),
            timeseries(
                "Anomaly scores",
                "Robust z-scores of the latest write's volume and of the gap between writes "
                "against the table's own history; red lines: the default threshold of +/-4 "
                "(alerts LakewardenVolumeAnomaly, LakewardenFreshnessAnomaly).",
                [
                    (f"max({sel('lakewarden_table_volume_anomaly_score', TABLE)})", "volume"),
                    (
                        f"max({sel('lakewarden_table_freshness_anomaly_score', TABLE)})",
                        "freshness",
                    ),
                ],
                thresholds=thresholds((None, "red"), (-4, "transparent"), (4, "red")),
                thresholds_style="line",
                decimals=1,
                w=12,
                h=8,
            ),
            timeseries(
                "Schema changes",
                "Columns added, removed or retyped (alert LakewardenSchemaDrift).",
                [
                    (
                        schema_changes(TABLE, "lakewarden_change"),
                        "{{lakewarden_change}}",
                    )
                ],
                bars=True,
                decimals=0,
                w=6,
                h=8,
            ),
            stat(
                "Schema changes, all time",
                "Schema changes seen on the table since lakewarden began tracking it, by kind.",
                [
                    (
                        agg(
                            "max",
                            "lakewarden_change",
                            sel("lakewarden_schema_changes_total", TABLE),
                        ),
                        "{{lakewarden_change}}",
                    )
                ],
                text="value_and_name",
                w=6,
                h=8,
            ),
            row("Writers"),
            timeseries(
                "Rows written by agent",
                "Rows per second committed to the table, by agent and operation.",
                [
                    (
                        rate(
                            "lakewarden_rows_written_total",
                            TABLE,
                            "gen_ai_agent_name, db_operation_name",
                        ),
                        "{{gen_ai_agent_name}} {{db_operation_name}}",
                    )
                ],
                unit="short",
                links=[AGENT_LINK],
                w=8,
                h=8,
            ),
            timeseries(
                "Blocked writes by check and agent",
                "Writes per second to the table rolled back by the quality gate.",
                [
                    (
                        rate(
                            "lakewarden_quality_gate_blocks_total",
                            TABLE,
                            "lakewarden_check_name, gen_ai_agent_name",
                        ),
                        "{{gen_ai_agent_name}} {{lakewarden_check_name}}",
                    )
                ],
                unit="short",
                links=[AGENT_LINK],
                w=8,
                h=8,
            ),
            timeseries(
                "Statement latency p95 by operation",
                "95th percentile duration of the statements that target this table.",
                [(quantile(0.95, TABLE, "db_operation_name"), "{{db_operation_name}}")],
                unit="s",
                w=8,
                h=8,
            ),
        ],
    )


# --- agent detail -----------------------------------------------------------------------------


def agent_detail() -> Json:
    agent_var = query_variable(
        "agent",
        "Agent",
        f"label_values({sel('lakewarden_statements_total', JOB)}, gen_ai_agent_name)",
    )
    ops = "db_client_operation_duration_seconds_count"
    error_ratio = f"{rate(ops, AGENT, extra=ERRORS)} / {rate(ops, AGENT)}"
    decision_colors = {"allowed": "green", "denied": "orange", "blocked": "purple", "failed": "red"}
    last_write = sel("lakewarden_table_last_modified_timestamp_seconds", AGENT)
    return dashboard(
        "lakewarden-agent",
        "lakewarden / Agent detail",
        "One agent: its statements and their governance decisions, rows written per table, "
        "latency and errors.",
        [agent_var],
        [
            row("$agent now"),
            stat(
                "Statements per second",
                "All statements of the agent, every decision.",
                [(rate("lakewarden_statements_total", AGENT), "")],
                unit="reqps",
                decimals=2,
                w=5,
                h=4,
            ),
            stat(
                "Denied",
                "Statements refused by policy in the selected time range.",
                [
                    (
                        in_range(
                            "lakewarden_statements_total",
                            AGENT,
                            extra='lakewarden_decision="denied"',
                        ),
                        "",
                    )
                ],
                decimals=0,
                thresholds=WARNING,
                w=5,
                h=4,
            ),
            stat(
                "Blocked by the quality gate",
                "Writes rolled back by the quality gate in the selected time range.",
                [(in_range("lakewarden_quality_gate_blocks_total", AGENT), "")],
                decimals=0,
                thresholds=WARNING,
                w=5,
                h=4,
            ),
            stat(
                "Error ratio",
                "Share of the agent's statements that ended in an error (denied, blocked, "
                "invalid, timed out or failed).",
                [(error_ratio, "")],
                unit="percentunit",
                thresholds=thresholds((None, "green"), (0.05, "orange"), (0.25, "red")),
                w=4,
                h=4,
            ),
            stat(
                "Rows written",
                "Rows the agent inserted, updated or deleted in the selected time range.",
                [(in_range("lakewarden_rows_written_total", AGENT), "")],
                decimals=0,
                w=5,
                h=4,
            ),
            row("Statements"),
            timeseries(
                "Statements by decision",
                "allowed, denied (policy), blocked (quality gate), failed (execution).",
                [
                    (
                        rate("lakewarden_statements_total", AGENT, "lakewarden_decision"),
                        "{{lakewarden_decision}}",
                    )
                ],
                unit="reqps",
                overrides=[
                    override(name, prop("color", {"mode": "fixed", "fixedColor": color}))
                    for name, color in decision_colors.items()
                ],
                w=12,
                h=8,
            ),
            timeseries(
                "Statements by operation",
                "Statements per second by SQL operation.",
                [
                    (
                        rate("lakewarden_statements_total", AGENT, "db_operation_name"),
                        "{{db_operation_name}}",
                    )
                ],
                unit="reqps",
                w=12,
                h=8,
            ),
            timeseries(
                "Latency p50 and p95",
                "Statement duration percentiles (db.client.operation.duration).",
                [(quantile(0.5, AGENT), "p50"), (quantile(0.95, AGENT), "p95")],
                unit="s",
                w=12,
                h=8,
            ),
            timeseries(
                "Errors by type",
                "Statements per second that ended in an error, by error.type.",
                [(rate(ops, AGENT, "error_type", extra=ERRORS), "{{error_type}}")],
                unit="reqps",
                w=12,
                h=8,
            ),
            row("Writes"),
            timeseries(
                "Rows written by table",
                "Rows per second the agent committed, by table and operation.",
                [
                    (
                        rate(
                            "lakewarden_rows_written_total",
                            AGENT,
                            "db_collection_name, db_operation_name",
                        ),
                        "{{db_collection_name}} {{db_operation_name}}",
                    )
                ],
                unit="short",
                w=8,
                h=8,
            ),
            timeseries(
                "Quality-gate blocks by table and check",
                "The agent's writes per second rolled back by the quality gate.",
                [
                    (
                        rate(
                            "lakewarden_quality_gate_blocks_total",
                            AGENT,
                            "db_collection_name, lakewarden_check_name",
                        ),
                        "{{db_collection_name}} {{lakewarden_check_name}}",
                    )
                ],
                unit="short",
                w=8,
                h=8,
            ),
            table(
                "Tables it wrote last",
                "Tables whose latest write is this agent's, with the time since.",
                [(f"time() - {agg('max', 'db_collection_name', last_write)}", "")],
                transformations=[
                    organize({"db_collection_name": "table", "Value": "since last write"})
                ],
                overrides=[
                    override("since last write", prop("unit", "s")),
                    override("table", prop("links", [TABLE_LINK])),
                ],
                w=8,
                h=8,
            ),
        ],
    )


DASHBOARDS = {
    "lakewarden-fleet.json": fleet,
    "lakewarden-table.json": table_detail,
    "lakewarden-agent.json": agent_detail,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE
    for name, text in render().items():
        (out / name).write_text(text, encoding="utf-8")
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
