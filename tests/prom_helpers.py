"""Prometheus, promtool and Grafana-dashboard helpers for the deploy, rule and dashboard tests."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_FILES = (RULES_DIR / "recording.yaml", RULES_DIR / "alerts.yaml")
RUNBOOKS = ROOT / "docs" / "runbooks.md"

# DESIGN.md, "Telemetry": the metrics dashboards and rules may name (histograms add suffixes).
DESIGN_METRICS = {
    "db_client_operation_duration_seconds",
    "lakewarden_statements_total",
    "lakewarden_rows_written_total",
    "lakewarden_quality_gate_blocks_total",
    "lakewarden_table_rows",
    "lakewarden_table_columns",
    "lakewarden_table_last_modified_timestamp_seconds",
    "lakewarden_table_last_event_timestamp_seconds",
    "lakewarden_table_freshness_sla_seconds",
    "lakewarden_schema_changes_total",
    "lakewarden_column_null_ratio",
    "lakewarden_column_null_ratio_max",
    "lakewarden_check_passing",
    "lakewarden_table_volume_anomaly_score",
    "lakewarden_table_freshness_anomaly_score",
    "lakewarden_signal_duration_seconds",
    "lakewarden_build_info",
    "lakewarden_telemetry_dropped_total",
}
DESIGN_ALERTS = {
    "LakewardenTableStale",
    "LakewardenNullRatioHigh",
    "LakewardenSchemaDrift",
    "LakewardenVolumeAnomaly",
    "LakewardenFreshnessAnomaly",
    "LakewardenQualityGateBlocking",
    "LakewardenAgentDenied",
    "LakewardenSidecarDown",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

T = TypeVar("T")


def tool(name: str) -> str:
    """Path of a Prometheus binary. CI installs them (.ci/run), so missing is a failure."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's 'prometheus' package (see .ci/run)")
    return path


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, step_s: float = 0.25) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = probe()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(step_s)


# --- rules ------------------------------------------------------------------------------------


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def alert_rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules(RULES_DIR / "alerts.yaml")}


def recording_rules() -> dict[str, dict[str, Any]]:
    return {r["record"]: r for r in rules(RULES_DIR / "recording.yaml")}


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown document."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# --- dashboards -------------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON, for every dashboard in dashboards/."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows excluded), including panels inside collapsed rows."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str  # uid
    panel: str  # title
    ref: str
    expr: str
    legend: str = ""

    @property
    def id(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref}"


def panel_queries() -> list[PanelQuery]:
    return [
        PanelQuery(
            board["uid"],
            panel["title"],
            target["refId"],
            target["expr"],
            target.get("legendFormat", ""),
        )
        for board in dashboards().values()
        for panel in panels(board)
        for target in panel["targets"]
    ]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variable interpolation, as far as these dashboards use it.

    Handles ``$name``, ``${name}`` and ``[[name]]``; the built-ins get the values Grafana would
    give a short time range on a 1s scrape interval.
    """
    values = {
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range": "5m",
        "__range_s": "300",
        "__range_ms": "300000",
        **variables,
    }

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


GROUPING_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", *GROUPING_WORDS}
GROUPING = re.compile(rf"\b({'|'.join(GROUPING_WORDS)})\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers not followed by '(' and not labels)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groupings = GROUPING.sub(" ", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    names = set()
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", without_ranges):
        if match.group(2) or match.group(1) in PROMQL_KEYWORDS:
            continue
        names.add(match.group(1))
    return names


def base_metric(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in DESIGN_METRICS:
            return name[: -len(suffix)]
    return name


# --- a Prometheus server ----------------------------------------------------------------------


class Prometheus:
    """A real Prometheus on a free loopback port, with a throw-away TSDB."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def wait_ready(self, timeout_s: float = 30) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited: {self.log_text()[-2000:]}")
            return self.http.get("/-/ready").status_code == 200

        wait_for("prometheus to be ready", ready, timeout_s)

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = self.http.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return list(body["data"]["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        response = self.http.get(f"/api/v1/label/{label}/values", params={"match[]": match})
        return list(response.json()["data"])

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        body = self.http.get("/api/v1/alerts").json()
        return [
            a
            for a in body["data"]["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == state
        ]

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process)
        self.log.close()


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 15) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)


@contextmanager
def prometheus(config: dict[str, Any], workdir: Path) -> Iterator[Prometheus]:
    server = Prometheus(config, workdir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
