"""The shipped Prometheus rules and configs: valid for promtool, unit-tested, and complete.

promtool comes from Debian's ``prometheus`` package, which CI installs (.ci/run): without it these
tests fail rather than skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from prom_helpers import (
    DESIGN_ALERTS,
    DESIGN_METRICS,
    PROMETHEUS_DIR,
    RULE_FILES,
    RULES_DIR,
    RUNBOOKS,
    alert_rules,
    base_metric,
    github_anchors,
    metric_names,
    recording_rules,
    rules,
    run,
    tool,
)

RUNBOOK_BASE = "https://github.com/lakewarden/lakewarden/blob/main/docs/runbooks.md#"


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_promtool_accepts_the_rule_file(rule_file: Path) -> None:
    result = run(tool("promtool"), "check", "rules", rule_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", RULES_DIR / "tests.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-fleet.yml"])
def test_promtool_accepts_the_compose_prometheus_config(config: str) -> None:
    # Rule files are relative to the config, so promtool also checks the rules it loads.
    result = run(tool("promtool"), "check", "config", config, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_the_design_alerts_and_only_they_are_defined() -> None:
    defined = [rule["alert"] for rule in rules(RULES_DIR / "alerts.yaml")]
    assert sorted(defined) == sorted(DESIGN_ALERTS)  # each exactly once


@pytest.fixture(scope="module")
def runbook_anchors() -> set[str]:
    return github_anchors(RUNBOOKS.read_text())


@pytest.mark.parametrize("name", sorted(DESIGN_ALERTS))
def test_alert_is_documented_and_routable(name: str, runbook_anchors: set[str]) -> None:
    rule = alert_rules()[name]
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert annotations["summary"].endswith(".")
    assert "{{" not in annotations["summary"], "summary is a constant sentence"
    assert "$labels" in annotations["description"]
    assert "$value" in annotations["description"]
    url = annotations["runbook_url"]
    assert url == RUNBOOK_BASE + name.lower()
    assert name.lower() in runbook_anchors, f"docs/runbooks.md has no section {name}"


@pytest.mark.parametrize("name", sorted(DESIGN_ALERTS))
def test_alert_has_unit_tests_that_fire_and_stay_silent(name: str) -> None:
    cases = [
        case
        for test in yaml.safe_load((RULES_DIR / "tests.yaml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == name
    ]
    assert any(case["exp_alerts"] for case in cases), f"no promtool case where {name} fires"
    assert any(not case["exp_alerts"] for case in cases), f"no promtool case where {name} is quiet"


def rule_exprs() -> list[Any]:
    return [
        pytest.param(rule["expr"], id=name)
        for name, rule in {**recording_rules(), **alert_rules()}.items()
    ]


@pytest.mark.parametrize("expr", rule_exprs())
def test_rules_name_only_design_metrics(expr: str) -> None:
    known = DESIGN_METRICS | set(recording_rules()) | {"up"}
    unknown = {m for m in metric_names(expr) if base_metric(m) not in known}
    assert not unknown, f"not a DESIGN.md metric: {unknown}"


@pytest.mark.parametrize("record", sorted(recording_rules()))
def test_recording_rule_names_follow_level_metric_operations(record: str) -> None:
    level, metric, *operations = record.split(":")
    assert level and metric and len(operations) <= 1
    assert base_metric(metric) in DESIGN_METRICS or metric.startswith("lakewarden_")
