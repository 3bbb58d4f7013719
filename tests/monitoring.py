"""The shipped Prometheus rules and Grafana dashboard (contrib/), read for the tests.

Used by ``tests/unit/test_monitoring_contrib.py`` (structure, metric names, runbook anchors)
and ``tests/integration/test_monitoring_promtool.py`` (promtool on the same expressions).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus" / "kei-gateway.rules.yml"
RULES_TEST = ROOT / "contrib" / "prometheus" / "kei-gateway.rules.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "kei-gateway.json"
ALERTS_DOC = ROOT / "docs" / "alerts.md"

# What Grafana puts in place of its variables before a query reaches Prometheus (any valid value will do).
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d", "$job": ".+", "$instance": ".+"}


@dataclass(frozen=True)
class Expression:
    where: str  # "rule KeiGatewayPeerDown", "panel 'Queue' target A", ...
    promql: str


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    with open(DASHBOARD, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels inside a collapsed row
    return found


def grafana_to_promql(text: str) -> str:
    """*text* with Grafana's variables replaced as Grafana would (longest names first)."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        text = text.replace(name, GRAFANA_VARIABLES[name])
    if "$" in text:
        raise ValueError(f"unknown Grafana variable in {text!r}")
    return text


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_]\w*)\)$")


def dashboard_expressions(board: dict[str, Any] | None = None) -> list[Expression]:
    """Every PromQL expression of the dashboard: panel targets and the selectors of label_values() variables."""
    board = board if board is not None else dashboard()
    found = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            found.append(Expression(f"panel {panel['title']!r} target {target['refId']}",
                                    grafana_to_promql(target["expr"])))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["definition"])
            if match is None:
                raise ValueError(f"variable {variable['name']}: not label_values(SELECTOR, LABEL)")
            found.append(Expression(f"variable {variable['name']}", grafana_to_promql(match["selector"])))
    return found


def rule_expressions() -> list[Expression]:
    return [Expression(f"rule {rule['alert']}", rule["expr"]) for rule in alert_rules()]


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def doc_anchors(path: Path = ALERTS_DOC) -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}
