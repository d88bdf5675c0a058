"""The Helm chart in helm/tuneloop: lint, render, validate every object, each optional feature.

No cluster is involved: `helm template` renders the chart with several value sets; core objects are
validated against the Kubernetes 1.28 and 1.33 schemas (kubernetes-validate, strict), custom
resources against the openAPIV3Schema of their CRD in ../shared/k8s-crds/, made strict (an API
server would silently drop an unknown field, so a typo in the chart would be a lost setting).
Value sets render a copy of the chart whose monitoring/ holds alert rules and dashboards
(helpers.helm.copy_chart_with_monitoring), so the PrometheusRule and dashboards ConfigMap are
validated too. test_chart_objects.py checks what the objects say, test_chart_monitoring.py the one-source
monitoring files, test_chart_values.py the values schema; helpers/chart_values.py holds the value
sets and features.
"""

from __future__ import annotations

import copy
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers.chart_values import FEATURES, LONG_RELEASE, VALUE_SETS, Feature
from helpers.helm import (
    CHART,
    HELM,
    NO_HELM,
    REPO,
    Doc,
    Renderer,
    Values,
    all_docs,
    helm,
    one,
    unique_docs,
)

pytestmark = pytest.mark.skipif(HELM is None, reason=NO_HELM)

CRD_DIR = REPO.parent / "shared" / "k8s-crds"
KUBE_VERSIONS = ("1.28.0", "1.33.0")
CUSTOM_KINDS = {
    ("ray.io/v1", "RayCluster"): "ray.io_rayclusters.yaml",
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}


# -- lint ----------------------------------------------------------------------------------------


def test_helm_lint_strict_with_every_value_set(tmp_path: Path, monitoring_chart: Path) -> None:
    def lint(item: tuple[str, Values]) -> tuple[str, subprocess.CompletedProcess[str]]:
        name, values = item
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        return name, helm("lint", "--strict", monitoring_chart, "-f", path, check=False)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lint, [("repository-chart", {}), *VALUE_SETS.items()]))
    results.append(("repository-chart", helm("lint", "--strict", CHART, check=False)))
    failed = {name: p.stdout + p.stderr for name, p in results if p.returncode != 0}
    assert not failed, failed


# -- every rendered object is valid ----------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_core_objects_are_valid_kubernetes(rendered: dict[str, list[Doc]], kube_version: str) -> None:
    problems = []
    checked = 0
    for set_name, doc in unique_docs(rendered):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
            checked += 1
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(
                f"[{set_name}] {doc['kind']} {doc['apiVersion']}: not a Kubernetes {kube_version} kind"
            )
        except kubernetes_validate.ValidationError as exc:
            # A jsonschema error: its message, without the schema dump str(exc) carries.
            where = "/".join(map(str, exc.absolute_path))
            name = doc["metadata"]["name"]
            problems.append(f"[{set_name}] {doc['kind']} {name} at /{where}: {exc.message}")
    assert not problems, "\n".join(problems)
    assert checked > 20


def test_object_names_are_valid_with_the_longest_release_name(rendered: dict[str, list[Doc]]) -> None:
    dns1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for set_name, doc in all_docs(rendered):
        name = doc["metadata"]["name"]
        assert dns1123.match(name) and len(name) <= 63, f"[{set_name}] bad name {name!r}"
        if doc["kind"] == "CronJob":
            assert len(name) <= 52, name  # its Jobs get an 11-character suffix
        if doc["kind"] == "RayCluster":
            assert len(f"{name}-head-svc") <= 63, name  # KubeRay's head Service
    long_names = [d["metadata"]["name"] for d in rendered["long-release-name"]]
    assert long_names and all(n.startswith(LONG_RELEASE[:20]) for n in long_names)


def _strict(schema: Any) -> Any:
    """A CRD schema where objects with declared fields accept no others (an API server prunes them,
    so a typo in the chart would be a setting that silently disappears)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    crd = yaml.load((CRD_DIR / CUSTOM_KINDS[(api_version, kind)]).read_text(), Loader=yaml.CSafeLoader)
    group, _, version = api_version.partition("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = _strict(served["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


@pytest.mark.skipif(
    not CRD_DIR.is_dir(),
    reason=f"no CRDs at {CRD_DIR} (the team's shared folder) to validate custom resources with",
)
def test_custom_resources_are_valid_against_their_crds(rendered: dict[str, list[Doc]]) -> None:
    problems = []
    kinds_seen = set()
    for set_name, doc in unique_docs(rendered):
        key = (doc["apiVersion"], doc["kind"])
        if key not in CUSTOM_KINDS:
            continue
        kinds_seen.add(key)
        for error in crd_validator(*key).iter_errors(doc):
            where = "/".join(map(str, error.absolute_path))
            problems.append(
                f"[{set_name}] {doc['kind']} {doc['metadata']['name']} at {where}: {error.message}"
            )
    assert not problems, "\n".join(problems[:50])
    assert kinds_seen == set(CUSTOM_KINDS), f"not rendered by any value set: {set(CUSTOM_KINDS) - kinds_seen}"


def test_strict_crd_validation_catches_a_typo(rendered: dict[str, list[Doc]]) -> None:
    if not CRD_DIR.is_dir():
        pytest.skip(f"no CRDs at {CRD_DIR}")
    cluster = copy.deepcopy(one(rendered["default"], "RayCluster"))
    cluster["spec"]["headGroupSpec"]["rayStartParam"] = {}
    errors = list(crd_validator("ray.io/v1", "RayCluster").iter_errors(cluster))
    assert any("rayStartParam" in e.message for e in errors)


@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.id)
def test_optional_feature_renders_only_when_on(
    feature: Feature, renderer: Renderer, monitoring_chart: Path, rendered: dict[str, list[Doc]]
) -> None:
    chart = feature.chart(monitoring_chart)
    assert feature.select(renderer.docs(feature.on, chart)), f"{feature.id}: on, but nothing rendered"
    assert not feature.select(renderer.docs(feature.off, chart)), f"{feature.id}: off, but still rendered"
