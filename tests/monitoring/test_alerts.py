"""The alert rules of monitoring/alerts/: valid, unit-tested with promtool, and consistent with the metrics.

promtool (Debian's prometheus package, scripts/install-prometheus.sh) checks the rule files and runs
the unit tests in tests/monitoring/promtool/ (not under monitoring/alerts/: the Helm chart loads
every monitoring/alerts/*.yaml as a rule file). The Python tests here check what promtool does not:
that every alert has a case that fires and one that does not, that alerts carry a severity and
annotations naming the alias, and that rules and test series name only the metrics and labels
monitoring/metrics.py declares, so a renamed metric cannot leave a rule that never fires.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.helm import MONITORING, REPO
from helpers.prometheus import METRIC_NAME, NO_PROMETHEUS, PROMTOOL, declared_metrics, have_prometheus

RULE_FILES = sorted((MONITORING / "alerts").glob("*.yaml"))
TEST_FILES = sorted((REPO / "tests" / "monitoring" / "promtool").glob("*.test.yaml"))
SEVERITIES = {"critical", "warning", "info"}
SCRAPE_LABELS = {"instance", "job"}  # what a scrape adds to every series
SERIES = re.compile(r"^\s*(\w+)\s*(?:\{(.*)\})?\s*$")

needs_promtool = pytest.mark.skipif(not have_prometheus(), reason=NO_PROMETHEUS)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in _yaml(path)["groups"] for rule in group["rules"]]


def _alert_cases() -> list[dict[str, Any]]:
    return [
        case
        for path in TEST_FILES
        for group in _yaml(path)["tests"]
        for case in group.get("alert_rule_test", [])
    ]


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROMTOOL), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_the_rule_files_are_rule_files_and_the_tests_live_elsewhere() -> None:
    """The chart reads every monitoring/alerts/*.yaml as `groups:`; a promtool test file there breaks it."""
    assert [p.name for p in RULE_FILES] == ["tuneloop.yaml"] and TEST_FILES
    names = []
    for path in RULE_FILES:
        content = _yaml(path)
        assert set(content) == {"groups"}, f"{path.name}: a rule file holds `groups:` only"
        names += [group["name"] for group in content["groups"]]
    assert len(set(names)) == len(names) and all(n.startswith("tuneloop-") for n in names), names
    assert not [p for p in (MONITORING / "alerts").rglob("*") if p.is_file() and p.suffix != ".yaml"]


@needs_promtool
def test_promtool_accepts_the_rule_files() -> None:
    proc = _promtool("check", "rules", *RULE_FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    proc = _promtool("test", "rules", *TEST_FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    alerts = {rule["alert"] for rule in _rules()}
    cases = _alert_cases()
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested staying quiet"
    assert {c["alertname"] for c in cases} <= alerts, "tests of alerts that do not exist"


def test_alerts_carry_a_severity_and_annotations_that_name_the_alias() -> None:
    for rule in _rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name
    # Where an alert fires with an alias, promtool's expected annotations must name it.
    for case in _alert_cases():
        for alert in case.get("exp_alerts") or []:
            alias = alert["exp_labels"].get("alias")
            if alias:
                annotations = alert["exp_annotations"]
                assert alias in annotations["summary"] and alias in annotations["description"], case


def _series_in_tests() -> list[tuple[str, set[str]]]:
    found = []
    for path in TEST_FILES:
        for group in _yaml(path)["tests"]:
            for item in group.get("input_series", []):
                match = SERIES.match(item["series"])
                assert match, item["series"]
                labels = {kv.split("=", 1)[0].strip() for kv in (match[2] or "").split(",") if kv.strip()}
                found.append((match[1], labels))
    return found


def test_rules_and_their_test_series_use_only_declared_metrics_and_labels() -> None:
    declared = declared_metrics()
    for rule in _rules():
        named = set(METRIC_NAME.findall(rule["expr"]))
        assert named and named <= set(declared), f"{rule['alert']}: {named - set(declared)} not declared"
    for name, labels in _series_in_tests():
        assert name in declared, f"test series {name} is not in monitoring/metrics.py"
        assert labels - SCRAPE_LABELS == declared[name], f"{name}: labels {labels} != {declared[name]}"
