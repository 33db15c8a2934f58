"""The alert rules and the Grafana dashboard: valid PromQL over metrics that exist, and rules
that fire on the series they should and stay quiet on the others (``promtool test rules``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.integrations.http import CoordinatorMetrics
from helpers import coordinator

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "coordinator-rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "coordinator-rules.test.yaml"
PROMETHEUS_RULE = DEPLOY / "prometheus" / "prometheusrule.yaml"
DASHBOARD = DEPLOY / "grafana" / "pg-coordinator.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is missing (apt-get install prometheus; .ci/run installs it)",
)

#: Not in a scrape before anything happened: ages appear with the first heartbeat.
NOT_YET_EXPOSED = {"coordinator_heartbeat_age_seconds"}
#: PromQL words that look like metric names.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "or", "and",
    "unless", "offset", "le", "inf", "nan", "sum", "min", "max", "avg", "count", "group",
    "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
}  # fmt: skip


def rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def exposed_metric_names() -> set[str]:
    """The sample names a coordinator's /metrics serves."""
    coord = coordinator("postgresql://nobody@127.0.0.1:1/none", "rules", "billing")
    text = generate_latest(CoordinatorMetrics(coord).registry).decode()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def metric_names(expr: str) -> set[str]:
    """Identifiers of an expression that name series: not functions, labels or keywords."""
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges):
        rest = without_ranges[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS or word.startswith("$"):
            continue
        if re.search(rf"\b(by|without|on|ignoring)\s*\([^)]*\b{word}\b", without_ranges):
            continue
        names.add(word)
    return names


def test_the_prometheus_rule_holds_exactly_the_plain_rule_file() -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (resource["apiVersion"], resource["kind"]) == (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
    )
    assert resource["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_rules_and_dashboard_ask_for_metrics_that_exist() -> None:
    exposed = exposed_metric_names() | NOT_YET_EXPOSED
    asked = {name for rule in rules() for name in metric_names(rule["expr"])}
    asked |= {name for expr in dashboard_queries() for name in metric_names(expr)}
    assert "leader_election_master_status" in asked
    assert "coordinator_heartbeat_duration_seconds_bucket" in asked
    assert asked - exposed == set()


def test_every_alert_is_exercised_by_the_rule_tests() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == {rule["alert"] for rule in rules()}


def test_the_dashboard_has_the_panels_operators_look_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {panel["title"]: panel["type"] for panel in dashboard["panels"]}
    assert titles["Leadership per group"] == "state-timeline"
    assert titles["Term per group"] == "timeseries"
    assert titles["Failovers and fences"] == "timeseries"
    assert titles["Heartbeat latency"] == "timeseries"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "group"}


@needs_promtool
def test_promtool_accepts_the_rules_and_their_tests_pass() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, as a recording rule, through ``promtool check rules``: its parser, offline."""
    recorded = [
        {
            "record": f"dashboard:query_{i}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$group", ".+"),
        }
        for i, expr in enumerate(dashboard_queries())
    ]
    rule_file = tmp_path / "dashboard.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
