"""The shipped alert rules and dashboard (contrib/) against the daemon's real metrics (SPEC §8).

Metric and label names come from the exposition of :class:`GatewayMetrics` on a fresh registry,
so a renamed metric or label breaks these tests, not a city's alerting. promtool itself runs the
same expressions in tests/integration/test_monitoring_promtool.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from kei_gateway.runtime.metrics import GatewayMetrics, exposition
from tests.monitoring import (
    ALERTS_DOC, Expression, alert_rules, dashboard, dashboard_expressions, doc_anchors, github_anchor, load_yaml,
    panels, rule_expressions, RULES_TEST,
)

TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series
SYNTHETIC = {"up": set(), "ALERTS": {"alertname", "alertstate", "severity", "flow", "peer", "role", "listener", "state",
                                     "age"}}  # made by Prometheus
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def exported_metrics() -> dict[str, set[str]]:
    """Series name → label names, as the daemon exports them (histogram and counter suffixes included)."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition(registry).decode()):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        # Families without samples yet (labelled, nothing counted) still have their HELP and TYPE lines.
        names = {family.name + suffix for suffix in suffixes}
        names.update(sample.name for sample in family.samples)
        for name in names:
            labels.setdefault(name, set()).update(*(sample.labels for sample in family.samples))
    # A labelled metric exports its label names only with a first sample: take them from its declaration.
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for name in labels:
                if name == metric._name or name.startswith(metric._name + "_"):
                    labels[name].update(metric._labelnames)
    for name in labels:
        if name.endswith("_bucket"):
            labels[name].add("le")
    return labels


EXPORTED = exported_metrics()


def nodes(expression: Expression) -> list[Any]:
    try:
        tree = promql_parser.parse(expression.promql)
    except ValueError as error:
        raise AssertionError(f"{expression.where}: {expression.promql!r} does not parse: {error}") from None
    found: list[Any] = []
    promql_parser.walk(tree, found.append)
    return found


def problems(expression: Expression) -> Iterator[str]:
    """Metric and label names of *expression* that the daemon does not export."""
    every_label = TARGET_LABELS | {"le"} | set().union(*EXPORTED.values())
    for node in nodes(expression):
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            known = EXPORTED.get(name) if name not in SYNTHETIC else SYNTHETIC[name] | every_label
            if known is None:
                yield f"{expression.where}: metric {name!r} is not exported by the daemon"
                continue
            for matcher in node.matchers.matchers:
                if matcher.name not in known | TARGET_LABELS:
                    yield f"{expression.where}: {name} has no label {matcher.name!r}"
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            yield from (f"{expression.where}: no metric has the label {label!r} it aggregates by"
                        for label in node.modifier.labels if label not in every_label)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            used = list(matching.labels if matching is not None else []) + list(node.modifier.group_labels or [])
            yield from (f"{expression.where}: no metric has the label {label!r} it matches on"
                        for label in used if label not in every_label)


def test_when_the_daemons_metrics_are_read_then_the_spec_metrics_and_their_suffixes_are_there() -> None:
    """The oracle itself: what the checks below compare against is the real exposition."""
    assert EXPORTED["kei_gateway_transfers_total"] >= {"flow", "outcome"}
    assert {"kei_gateway_transfer_duration_seconds_bucket", "kei_gateway_transfer_duration_seconds_sum",
            "kei_gateway_transfer_duration_seconds_count"} <= set(EXPORTED)
    assert "le" in EXPORTED["kei_gateway_relay_latency_seconds_bucket"]
    assert "process_start_time_seconds" in EXPORTED
    assert "kei_gateway_transfers" not in EXPORTED  # a counter's family name is not a series


def test_when_an_expression_names_an_unknown_metric_or_label_then_the_check_says_which() -> None:
    found = list(problems(Expression("test", 'sum by (flow) (kei_gateway_transfer_total{outcome="failed"}) '
                                             '+ on (instance) kei_gateway_peer_up{flow="x"}')))
    assert found == ["test: metric 'kei_gateway_transfer_total' is not exported by the daemon",
                     "test: kei_gateway_peer_up has no label 'flow'"]
    assert list(problems(Expression("test", "sum by (colour) (up)"))) == [
        "test: no metric has the label 'colour' it aggregates by"]
    with pytest.raises(AssertionError, match="does not parse"):
        nodes(Expression("test", "rate(kei_gateway_transfers_total[5m]"))


@pytest.mark.parametrize("expression", rule_expressions() + dashboard_expressions(), ids=lambda e: e.where)
def test_when_a_shipped_expression_is_parsed_then_every_metric_and_label_it_names_is_exported(
        expression: Expression) -> None:
    assert list(problems(expression)) == []


def test_when_the_rules_are_read_then_each_alert_has_a_severity_both_languages_and_a_runbook_anchor() -> None:
    anchors = doc_anchors()
    names = []
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule  # alerts only
        names.append(rule["alert"])
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        notes = rule["annotations"]
        assert set(notes) == {"summary", "summary_ja", "description", "description_ja", "runbook_url"}, rule["alert"]
        assert JAPANESE.search(notes["summary_ja"]) and JAPANESE.search(notes["description_ja"]), rule["alert"]
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/alerts.md" and anchor == github_anchor(rule["alert"]), notes["runbook_url"]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {ALERTS_DOC}"
    assert len(names) == len(set(names))


def test_when_a_rule_aggregates_then_it_keeps_every_label_but_the_ones_it_sums_over() -> None:
    """``sum by`` would drop labels a site adds at scrape time (say city="131041") from the alert."""
    for expression in rule_expressions():
        for node in nodes(expression):
            if isinstance(node, promql_parser.AggregateExpr):
                assert node.modifier is not None and node.modifier.type == promql_parser.AggModifierType.Without, \
                    f"{expression.where}: aggregate with 'without (...)'"


def test_when_the_promtool_tests_are_read_then_every_alert_fires_in_one_case_and_is_silent_in_another() -> None:
    spec = load_yaml(RULES_TEST)
    assert spec["rule_files"] == ["kei-gateway.rules.yml"]
    firing: set[str] = set()
    silent: set[str] = set()
    for test in spec["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert firing <= names and silent <= names, (firing | silent) - names
    assert names - firing == set(), "alerts never made to fire"
    assert names - silent == set(), "alerts never shown silent"


def test_when_the_dashboard_is_read_then_datasource_job_and_instance_are_variables_every_query_uses() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query" and variables[name]["multi"] and variables[name]["includeAll"]
    assert '{job=~"$job"}' in variables["instance"]["definition"]
    titles = []
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert 'instance=~"$instance"' in target["expr"], f"{panel['title']}: not filtered by instance"
            if "ALERTS" not in target["expr"]:
                assert target["expr"].count('instance=~"$instance"') == target["expr"].count('job=~"$job"'), \
                    f"{panel['title']}: a selector without the job filter"
    assert len(titles) == len(set(titles))
    rows = {panel["title"] for panel in board["panels"] if panel["type"] == "row"}
    assert {"Throughput", "Queue", "Latency", "Payment results (MPN)", "Peers and connections", "Certificates",
            "Purge and audit"} <= rows
