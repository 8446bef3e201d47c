"""The Prometheus and Grafana files of deploy/: every metric name, label and label value a
PromQL expression or a dashboard query uses must be one the proxy exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.telemetry.metrics import Metrics

from support.deploy import DASHBOARD, LAYOUTS, POD_MONITOR, PROMETHEUS_RULE
from support.kustomize import Doc, load_documents

# Labels that Prometheus adds to every scraped series: not the proxy's to define.
TARGET_LABELS = frozenset({"namespace", "pod", "container", "job", "instance", "endpoint"})


# --- metric names in PromQL ----------------------------------------------------------------


@dataclass(frozen=True)
class Exposition:
    names: frozenset[str]
    labels: dict[str, dict[str, set[str]]]


@cache
def exposition() -> Exposition:
    """Metric names and label values the proxy exports, read from its real /metrics text."""
    text = generate_latest(Metrics().registry).decode()
    names: set[str] = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        name, kind = match.groups()
        names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {
            name}
    labels: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            for key, value in sample.labels.items():
                labels.setdefault(sample.name, {}).setdefault(key, set()).add(value)
    return Exposition(frozenset(names), labels)


METRIC = re.compile(r"\bdrain_proxy_[a-z0-9_]+")  # Prometheus names may hold digits (h2)
RECORDED = re.compile(r"\bdrain_proxy:[a-z_:]+")
SELECTOR = re.compile(r"\b(drain_proxy_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def check_promql(expr: str, recorded: set[str]) -> set[str]:
    """Fail on a metric, label or label value the proxy does not export; return the metrics."""
    known = exposition()
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    for opening, closing in ("()", "[]", "{}"):
        assert without_strings.count(opening) == without_strings.count(closing), expr
    used = set(METRIC.findall(expr))
    unknown = used - known.names
    assert not unknown, f"not exported by the proxy: {sorted(unknown)} in {expr}"
    assert set(RECORDED.findall(expr)) <= recorded, f"unrecorded rule in {expr}"
    for metric, matchers in SELECTOR.findall(expr):
        for label, op, value in MATCHER.findall(matchers):
            if label in TARGET_LABELS:
                continue
            values = known.labels.get(metric, {}).get(label)
            assert values is not None, f"{metric} has no label {label!r}: {expr}"
            if op in ("=", "!="):
                assert value in values, f"{metric}{{{label}}} is never {value!r}: {expr}"
    return used


def test_promql_check_catches_mistakes() -> None:
    check_promql('drain_proxy_upstream_errors_total{reason!="connect"}', set())
    for wrong in ("rate(drain_proxy_requests_cut[5m])",  # the counter's name lacks _total
                  "drain_proxy_request_duration_seconds > 1",  # histogram needs a suffix
                  'drain_proxy_upstream_errors_total{reason="retry"}',
                  'drain_proxy_phase{drain_proxy_phase="serving"}',  # the label is phase
                  "sum(drain_proxy_requests_in_flight",
                  "drain_proxy:unknown_rule"):
        with pytest.raises(AssertionError):
            check_promql(wrong, set())


def rule_groups() -> list[Doc]:
    (rule,) = load_documents(PROMETHEUS_RULE)
    groups: list[Doc] = rule["spec"]["groups"]
    return groups


def recorded_names() -> set[str]:
    return {r["record"] for group in rule_groups() for r in group["rules"] if "record" in r}


DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def test_prometheus_rule_shape() -> None:
    (rule,) = load_documents(PROMETHEUS_RULE)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"] and set(rule["spec"]) == {"groups"}
    group_names = [group["name"] for group in rule_groups()]
    assert len(set(group_names)) == len(group_names)
    alerts = []
    for group in rule_groups():
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for entry in group["rules"]:
            assert ("alert" in entry) != ("record" in entry), entry
            assert isinstance(entry["expr"], str) and entry["expr"].strip()
            if "record" in entry:
                assert set(entry) <= {"record", "expr", "labels"}
                assert re.fullmatch(r"[a-z_]+(:[a-z_]+)+", entry["record"]), entry["record"]
                continue
            alerts.append(entry["alert"])
            assert set(entry) <= {"alert", "expr", "for", "labels", "annotations"}, entry
            assert re.fullmatch(r"[A-Z][A-Za-z]+", entry["alert"])
            assert entry["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description"} <= set(entry["annotations"])
            if "for" in entry:
                assert DURATION.match(entry["for"])
    assert len(set(alerts)) == len(alerts) >= 3


def test_alert_expressions_use_exported_metrics() -> None:
    recorded = recorded_names()
    used: set[str] = set()
    for group in rule_groups():
        for entry in group["rules"]:
            used |= check_promql(entry["expr"], recorded)
    assert {"drain_proxy_requests_cut_total", "drain_proxy_last_accept_after_drain_start_seconds",
            "drain_proxy_upstream_errors_total", "drain_proxy_phase"} <= used


def test_pod_monitor_shape() -> None:
    (monitor,) = load_documents(POD_MONITOR)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    assert monitor["metadata"]["name"]
    assert set(monitor["spec"]) <= {"namespaceSelector", "selector", "podMetricsEndpoints"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["path"] == "/metrics"
    assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])
    assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])
    # A drain is over within window + drain timeout: scrape several times during one.
    assert _seconds(endpoint["interval"]) * 3 <= LAYOUTS[0].settings.drain_budget_s


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


# --- the Grafana dashboard -----------------------------------------------------------------


def dashboard_queries(dashboard: Doc) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["query"]["query"]


def test_dashboard_queries_use_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    recorded = recorded_names()
    used: set[str] = set()
    for query in dashboard_queries(dashboard):
        used |= check_promql(query, recorded)
    assert {"drain_proxy_phase", "drain_proxy_last_accept_after_drain_start_seconds",
            "drain_proxy_connections_closed_total", "drain_proxy_requests_in_flight",
            "drain_proxy_request_duration_seconds_bucket", "drain_proxy_requests_cut_total",
            "drain_proxy_requests_total", "drain_proxy_h2_goaways_total",
            "drain_proxy_h2_streams_active"} <= used


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels) >= 7
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["title"] and panel["targets"], panel["id"]
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs)
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        for target in panel["targets"]:
            if "drain_proxy_" in target["expr"] and "{" in target["expr"]:
                assert '$namespace' in target["expr"] and '$pod' in target["expr"], target

