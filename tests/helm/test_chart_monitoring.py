"""Monitoring has one source: the chart reads monitoring/ through a link, and copies nothing.

The PrometheusRule must hold every alert group of monitoring/alerts/*.yaml and the dashboards
ConfigMap every monitoring/dashboards/*.json, in the chart folder and in the packaged chart alike,
and a packaged chart must carry nothing else from monitoring/ (Helm stores the chart in every
release). Tests run against the real folder (which may hold no files yet) and against a copy with
the real files plus generated ones.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.helm import (
    CHART,
    GENERATED_DASHBOARD,
    HELM,
    MONITORING,
    NO_HELM,
    RELEASE,
    Doc,
    Renderer,
    by_kind,
    copy_chart_with_monitoring,
    generated_alerts,
    helm,
    named,
    one,
)

pytestmark = pytest.mark.skipif(HELM is None, reason=NO_HELM)


def test_chart_reads_monitoring_through_a_link_to_the_repository_folder() -> None:
    link = CHART / "files" / "monitoring"
    assert link.is_symlink(), "files/monitoring must be a link, never a copy that can drift"
    assert os.readlink(link) == "../../../monitoring"
    assert link.resolve() == MONITORING.resolve()


def _expected_monitoring(monitoring: Path) -> tuple[dict[str, str], list[Any]]:
    dashboards = {p.name: p.read_text() for p in sorted((monitoring / "dashboards").glob("*.json"))}
    groups = [
        g
        for p in sorted((monitoring / "alerts").glob("*.yaml"))
        for g in yaml.safe_load(p.read_text())["groups"]
    ]
    return dashboards, groups


def _check_monitoring_objects(docs: list[Doc], monitoring: Path) -> None:
    dashboards, groups = _expected_monitoring(monitoring)
    config_maps = named("ConfigMap", "-dashboards")(docs)
    if dashboards:
        (config_map,) = config_maps
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["data"] == dashboards  # every file, byte for byte
    else:
        assert config_maps == []
    rules = by_kind(docs, "PrometheusRule")
    if groups:
        (rule,) = rules
        assert rule["spec"]["groups"] == groups  # every group of every file, in file order
    else:
        assert rules == []


def test_rule_and_dashboard_objects_hold_every_monitoring_file(
    monitoring_chart: Path, renderer: Renderer
) -> None:
    monitoring = monitoring_chart.parents[1] / "monitoring"
    docs = renderer.docs({}, monitoring_chart)
    _check_monitoring_objects(docs, monitoring)
    assert GENERATED_DASHBOARD in one(docs, "ConfigMap", "-dashboards")["data"]
    assert len(one(docs, "PrometheusRule")["spec"]["groups"]) >= 3


def test_repository_chart_holds_the_repository_monitoring_files(renderer: Renderer) -> None:
    """The real chart against the real monitoring/ folder (which may not hold any files yet)."""
    _check_monitoring_objects(renderer.docs({}, CHART), MONITORING)


def _package(chart: Path, dest: Path) -> tuple[Path, list[str]]:
    helm("package", chart, "-d", dest)
    (archive,) = dest.glob("tuneloop-*.tgz")
    with tarfile.open(archive) as tar:
        return archive, tar.getnames()


def _monitoring_members(names: list[str]) -> list[str]:
    return [
        n.removeprefix("tuneloop/files/monitoring/")
        for n in names
        if n.startswith("tuneloop/files/monitoring/")
    ]


def _check_only_rule_and_dashboard_files(members: list[str]) -> None:
    stray = [m for m in members if not re.fullmatch(r"dashboards/[^/]+\.json|alerts/[^/]+\.yaml", m)]
    assert not stray, (
        f"the packaged chart carries {stray} from monitoring/: Helm stores the chart in every release "
        "(1 MiB limit), so add patterns for them to helm/tuneloop/.helmignore"
    )


def test_packaged_chart_carries_the_monitoring_files_and_nothing_else(
    monitoring_chart: Path, tmp_path: Path, renderer: Renderer
) -> None:
    archive, names = _package(monitoring_chart, tmp_path)
    members = _monitoring_members(names)
    _check_only_rule_and_dashboard_files(members)
    monitoring = monitoring_chart.parents[1] / "monitoring"
    expected = {f"dashboards/{p.name}" for p in (monitoring / "dashboards").glob("*.json")}
    expected |= {f"alerts/{p.name}" for p in (monitoring / "alerts").glob("*.yaml")}
    assert set(members) == expected
    # The package renders the same objects as the chart folder.
    _check_monitoring_objects(renderer.docs({}, archive), monitoring)


def test_packaging_the_repository_chart_leaves_the_python_package_out(tmp_path: Path) -> None:
    _, names = _package(CHART, tmp_path)
    _check_only_rule_and_dashboard_files(_monitoring_members(names))
    assert "tuneloop/values.schema.json" in names and "tuneloop/templates/NOTES.txt" in names


@pytest.mark.parametrize(
    ("content", "message"),
    [("rules: []\n", "has no `groups:` list"), ("groups: [\n", "is not valid YAML")],
    ids=["no-groups", "bad-yaml"],
)
def test_an_alert_file_the_chart_cannot_use_stops_the_render(
    tmp_path: Path, content: str, message: str
) -> None:
    chart = copy_chart_with_monitoring(tmp_path, lambda m: (m / "alerts" / "broken.yaml").write_text(content))
    proc = helm("template", RELEASE, chart, check=False)
    assert proc.returncode != 0 and "monitoring/alerts/broken.yaml" in proc.stderr and message in proc.stderr


def test_an_alert_group_defined_twice_stops_the_render(tmp_path: Path) -> None:
    duplicate = generated_alerts("tuneloop-test-drift", 1)
    chart = copy_chart_with_monitoring(
        tmp_path, lambda m: (m / "alerts" / "again.yaml").write_text(duplicate)
    )
    proc = helm("template", RELEASE, chart, check=False)
    assert proc.returncode != 0 and '"tuneloop-test-drift-0"' in proc.stderr
