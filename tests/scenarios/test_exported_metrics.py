"""The chart's alert rules (docs/operations/prometheus-rules.yaml, the chart's PrometheusRule rendered
with its defaults: tests/helm/test_alert_rules.py) and its Grafana dashboard
(helm/kronos-stream/dashboards/kronos-stream.json) name only metrics that a running daemon exports on
GET /metrics: a daemon with a model registry (so the swap metrics exist) and online scoring, after it
has forecast and scored bars from real Kafka, with its state in real Redis."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kronos_contract.registry import Registry
from tests.support.hotswap import TINY, publish
from tests.support.launcher import (
    Topics,
    bar_series,
    daemon_settings,
    interleave,
    metric,
    produce,
    running_daemon,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "docs" / "operations" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "helm" / "kronos-stream" / "dashboards" / "kronos-stream.json"
# series Prometheus itself writes for each scrape target (not the daemon's)
PROMETHEUS_OWN = {"up"}

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
}
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![0-9.A-Za-z_:$])[A-Za-z_:][A-Za-z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside strings, label matchers,
    ranges and label lists that are not a function, an aggregation or a keyword."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = _LABEL_LISTS.sub("", s)
    names = set()
    for m in _IDENT.finditer(s):
        if s[m.end() :].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def exported_names(exposition: str) -> set[str]:
    """Every series name an exposition offers: its samples, and what each family's type exports
    (a labelled counter with no child yet still declares its family)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_exprs() -> dict[str, str]:
    """(panel title / variable) -> PromQL; a ``label_values(selector, label)`` variable gives its selector."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} {target['refId']}"] = target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["definition"]
            if query.startswith("label_values("):
                query = query[len("label_values(") : query.rindex(",")]
            out[f"${var['name']}"] = query
    return out


def test_promql_metric_names() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (namespace, le) (rate(kronos_x_bucket{job="a",le=~"1|x"}[10m]))) > 5'
    ) == {"kronos_x_bucket"}
    assert promql_metric_names(
        '1 - sum by (v) (rate(a_total[1h])) / sum without (step) (rate(b_total{c="d e"}[$__rate_interval])) < 1e-9'
        " and on (v) c_total offset 5m >= 500 or vector(1) unless up"
    ) == {"a_total", "b_total", "c_total", "up"}
    assert promql_metric_names("abs(kronos_typo_total - 0.8) > 0.1") == {"kronos_typo_total"}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        return str(response.read().decode())


async def test_rules_and_dashboard_name_only_metrics_the_daemon_exports(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    publish(Registry(str(root)), "v1", TINY, promote=True)
    model = {"registry": str(root), "registry_poll_s": 3600.0, "device": "cpu", "threads": 1}
    model["cache_dir"] = str(tmp_path / "cache")
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, model=model, http_port=0
    )
    series = [bar_series(s, 10, seed=i) for i, s in enumerate(("MA", "MB"))]
    async with running_daemon(settings, None) as d:
        await produce(kafka_bootstrap, topics.input, interleave(*series))
        # horizon 4: the first forecasts of each symbol are realised and scored
        await wait_until(
            lambda: metric(d, "kronos_scored_forecasts_total", model_version="v1") >= 2, 90, "scores"
        )
        assert d.ops is not None
        text = await asyncio.to_thread(_scrape, d.ops.port)
    exported = exported_names(text)
    # the scrape holds the scores and the swap, not only their declarations
    for sample in (
        "kronos_score_band_hits_total{",
        'kronos_model_swaps_total{result="ok"}',
        "kronos_score_skill{",
        'kronos_challenger_decisions_total{applied="true",decision="promote"}',
        "kronos_model_rollbacks_total ",
    ):
        assert sample in text, sample

    unknown = {}
    for where, exprs in (("rule", rule_exprs()), ("dashboard", dashboard_exprs())):
        assert exprs, where
        for name, expr in exprs.items():
            names = promql_metric_names(expr)
            assert names, f"{where} {name}: no metric in {expr!r}"
            missing = names - exported - PROMETHEUS_OWN
            if missing:
                unknown[f"{where} {name}"] = sorted(missing)
    assert not unknown, f"metrics the daemon does not export: {unknown}"
