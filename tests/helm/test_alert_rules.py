"""The chart's alert rules and Grafana dashboard, checked offline.

The PrometheusRule (templates/prometheusrule.yaml) is rendered by helm; its default rendering is the
plain rules file docs/operations/prometheus-rules.yaml, which ``promtool check rules`` validates and
``promtool test rules`` runs the unit tests of tests/helm/promtool/ on: every alert has a case where it
fires and one where it does not. promtool: ``$PROMTOOL``, ``.cache/promtool/bin/promtool``
(``scripts/ensure-promtool``, run by ``scripts/run-tests``) or on PATH; without it these tests skip,
and fail under CI=true. That the rules and the dashboard name only metrics the daemon exports is
checked against a running daemon's /metrics in tests/scenarios/test_exported_metrics.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.helm.chart_helpers import CHART, NAMESPACE, ROOT, missing_tool, render, run_helm, template_args

PROMTOOL_TESTS = sorted((Path(__file__).parent / "promtool").glob("*.yaml"))
DASHBOARD = CHART / "dashboards" / "kronos-stream.json"
ALL_RULES = (
    "consumerLag", "daemonDown", "serviceDown", "partitionStalled", "noForecasts", "slowForecasts",
    "deadLetters", "deadLetterLost", "coverage", "skill", "swapRefused", "rollback", "challengerDecided",
)  # fmt: skip


def _render_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_alert_rules", ROOT / "scripts" / "render_alert_rules.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RENDER = _render_script()


@pytest.fixture(scope="session")
def promtool() -> str:
    for candidate in (
        os.environ.get("PROMTOOL"),
        str(ROOT / ".cache" / "promtool" / "bin" / "promtool"),
        shutil.which("promtool"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    missing_tool(
        "promtool not found: run scripts/ensure-promtool (Debian's prometheus package) or set PROMTOOL"
    )
    raise AssertionError("unreachable")


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)


def rules_of(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_off_by_default(helm: str) -> None:
    objects = render(helm, None).objects
    assert not [o for o in objects if o["kind"] == "PrometheusRule"]
    assert not [o for o in objects if o["metadata"]["name"].endswith("-dashboard")]


def test_plain_rules_file_is_the_charts_rendering(helm: str) -> None:
    assert RENDER.RULES_FILE.read_text() == RENDER.dump(RENDER.plain_groups(helm)), (
        "docs/operations/prometheus-rules.yaml is stale: run python scripts/render_alert_rules.py"
    )


def test_promtool_checks_the_rules(helm: str, promtool: str, tmp_path: Path) -> None:
    """The plain file, and the release's own rendering (the default selector: its namespace and job)."""
    release = tmp_path / "release-rules.yaml"
    release.write_text(RENDER.dump(RENDER.rendered_groups(helm, namespace=NAMESPACE)))
    for path in (RENDER.RULES_FILE, release):
        proc = run_promtool(promtool, "check", "rules", str(path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"SUCCESS: {len(ALL_RULES)} rules found" in proc.stdout, proc.stdout
    text = release.read_text()
    assert f'namespace="{NAMESPACE}",job="kronos-stream-metrics"' in text


def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert PROMTOOL_TESTS, "tests/helm/promtool/*.yaml"
    proc = run_promtool(promtool, "test", "rules", *map(str, PROMTOOL_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_fires_in_one_case_and_not_in_another() -> None:
    alerts = set(rules_of(yaml.safe_load(RENDER.RULES_FILE.read_text())["groups"]))
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in PROMTOOL_TESTS:
        spec = yaml.safe_load(path.read_text())
        for case in spec["tests"]:
            for check in case.get("alert_rule_test") or []:
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fires == set(), "alerts no unit test sees firing"
    assert alerts - quiet == set(), "alerts no unit test sees quiet"
    assert (fires | quiet) - alerts == set(), "unit tests of alerts the rules do not have"


def test_values_reach_the_rules(helm: str) -> None:
    sets = (
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.rules.consumerLag.threshold=7",
        "metrics.prometheusRule.rules.consumerLag.for=3m",
        "metrics.prometheusRule.rules.consumerLag.severity=page",
        "metrics.prometheusRule.rules.coverage.window=2h",
        "metrics.prometheusRule.rules.skill.enabled=false",
        "metrics.prometheusRule.alertLabels.team=forecasting",
        "metrics.prometheusRule.labels.release=prom",
    )
    args = [*template_args(None, sets), "--set-string", 'metrics.prometheusRule.selector=env="prod"']
    args += ["--set-json", "metrics.prometheusRule.rules.coverage.nominal=0.9"]  # --set makes 0.9 a string
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stderr
    (rule,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "prom"
    rules = rules_of(rule["spec"]["groups"])
    assert "KronosSkillBelowBaseline" not in rules
    assert len(rules) == len(ALL_RULES) - 1
    lag = rules["KronosConsumerLag"]
    assert lag["expr"].endswith("> 7") and lag["for"] == "3m"
    assert lag["labels"] == {"severity": "page", "team": "forecasting"}
    coverage = rules["KronosCoverageOffNominal"]["expr"]
    assert "- 0.9" in coverage and "[2h]" in coverage
    for name, item in rules.items():
        assert '{env="prod"' in item["expr"], name
        assert "job=" not in item["expr"], name


def test_every_rule_can_be_turned_off(helm: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["metrics"]["prometheusRule"]["rules"]) == set(ALL_RULES)
    sets = ["metrics.prometheusRule.enabled=true"] + [
        f"metrics.prometheusRule.rules.{name}.enabled={'true' if name == 'swapRefused' else 'false'}"
        for name in ALL_RULES
    ]
    proc = run_helm(helm, *template_args(None, tuple(sets)))
    assert proc.returncode == 0, proc.stderr
    (rule,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "PrometheusRule"]
    assert list(rules_of(rule["spec"]["groups"])) == ["KronosModelSwapRefused"]


# --- the dashboard --------------------------------------------------------------------------------


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query of the dashboard: its panels' targets and its query variables."""
    exprs = []
    for panel in dashboard["panels"]:
        for panel_or_nested in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in panel_or_nested.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def grafana_to_promql(expr: str) -> str:
    """A panel query with Grafana's variables replaced by values Prometheus can parse; a
    ``label_values(selector, label)`` variable query becomes its selector."""
    expr = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$job", ".*")
    if expr.startswith("label_values("):
        expr = expr[len("label_values(") : expr.rindex(",")]
    return expr


def test_dashboard_config_map(helm: str) -> None:
    sets = ("metrics.grafanaDashboard.enabled=true", "metrics.grafanaDashboard.annotations.grafana_folder=Fx")
    objects = render(helm, None, sets).objects
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", "the sidecar's label"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Fx"}
    assert set(cm["data"]) == {"kronos-stream.json"}
    assert json.loads(cm["data"]["kronos-stream.json"]) == json.loads(DASHBOARD.read_text())


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    titles = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        titles.add(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert 'namespace=~"$namespace",job=~"$job"' in target["expr"], (panel["title"], target["expr"])
    # what the dashboard is for: throughput and latency, lag, live scores per version, swaps
    for wanted in ("forecasts out", "Latency", "lag", "coverage", "Skill", "Swaps"):
        assert any(wanted.lower() in t.lower() for t in titles), wanted


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule): a typo in PromQL fails here, not in Grafana."""
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool(promtool, "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout
