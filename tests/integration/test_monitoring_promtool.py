"""promtool (Prometheus's own parser and rule engine) on the shipped rules and dashboard (contrib/)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.monitoring import RULES, RULES_TEST, alert_rules, dashboard_expressions

pytestmark = pytest.mark.integration


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: it comes from the Debian package 'prometheus' (scripts/_setup.sh)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_when_promtool_checks_the_rules_then_every_alert_is_valid() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", checked.stdout)
    assert found is not None and int(found[1]) == len(alert_rules()), checked.stdout


def test_when_promtool_runs_the_rule_tests_then_each_alert_fires_and_stays_silent_as_expected() -> None:
    ran = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout


def test_when_the_rule_tests_expect_a_wrong_alert_then_promtool_fails_them(tmp_path: Path) -> None:
    """The rule tests can fail: a firing case turned silent is reported."""
    spec = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    test = next(t for t in spec["tests"] if any(c["alertname"] == "KeiGatewayPeerDown" for c in t["alert_rule_test"]))
    case = next(c for c in test["alert_rule_test"] if c["alertname"] == "KeiGatewayPeerDown" and c["exp_alerts"])
    case["exp_alerts"] = []
    spec["tests"] = [test]  # only the group with it: the others take seconds
    spec["rule_files"] = [str(RULES)]
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    ran = promtool("test", "rules", str(broken))
    assert ran.returncode != 0
    assert "KeiGatewayPeerDown" in ran.stdout + ran.stderr


def test_when_promtool_parses_every_dashboard_query_then_each_is_valid_promql(tmp_path: Path) -> None:
    """Each expression, Grafana's variables filled in, as a recording rule of a throwaway rule file."""
    expressions = dashboard_expressions()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"kei_gateway:dashboard_query:{number}", "expr": e.promql} for number, e in enumerate(expressions)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    checked = promtool("check", "rules", str(path))
    where = "\n".join(f"{n}: {e.where}: {e.promql}" for n, e in enumerate(expressions))
    assert checked.returncode == 0, checked.stdout + checked.stderr + "\n" + where
    assert f"SUCCESS: {len(expressions)} rules found" in checked.stdout


def test_when_a_query_is_not_promql_then_promtool_refuses_the_throwaway_rule_file(tmp_path: Path) -> None:
    """The check above can fail: promtool does parse the expressions it is given."""
    path = tmp_path / "bad.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "kei_gateway:bad", "expr": "sum by (flow) (rate(kei_gateway_transfers_total[5m])"}]}]}),
        encoding="utf-8")
    checked = promtool("check", "rules", str(path))
    assert checked.returncode != 0
