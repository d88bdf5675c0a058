"""Rendering the Helm chart in tests: helm itself, a cached `helm template`, and readers of its output.

helm is the static binary scripts/install-helm.sh puts in .venv/bin (`make test` runs it first);
HELM=/path/to/helm overrides it. `copy_chart_with_monitoring` builds a copy of the chart beside a
copy of monitoring/ holding the real alert and dashboard files plus generated ones, so tests of the
one-source monitoring objects work whether or not real files exist yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "tuneloop"
MONITORING = REPO / "monitoring"
RELEASE = "tl"
Doc = dict[str, Any]
Values = dict[str, Any]


def find_helm() -> str | None:
    """HELM, else the one scripts/install-helm.sh installs, else one on PATH."""
    for candidate in (os.environ.get("HELM"), str(REPO / ".venv" / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


HELM = find_helm()
NO_HELM = "no helm binary: run scripts/install-helm.sh (make test does) or set HELM"


def helm(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm; with check, a failure fails the test and shows helm's whole output."""
    if HELM is None:
        pytest.skip(NO_HELM)
    proc = subprocess.run([HELM, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(
            f"helm {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def render_notes(tmp_path: Path, values: dict[str, Any], namespace: str = "ml") -> str:
    """The chart's NOTES.txt for `values`. `helm template` never prints NOTES.txt, so a copy of the
    chart under `tmp_path` renders it into a ConfigMap."""
    chart = tmp_path / "helm" / "tuneloop"
    shutil.copytree(CHART, chart, symlinks=True)
    os.symlink(MONITORING, tmp_path / "monitoring")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include "tuneloop/templates/NOTES.txt" . | quote }}\n'
    )
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = helm(
        "template", RELEASE, chart, "-n", namespace, "-f", path, "--show-only", "templates/zz-notes.yaml"
    )
    notes: str = yaml.safe_load(proc.stdout)["data"]["notes"]
    return notes


@dataclass
class Renderer:
    """`helm template` with a cache, so each (values, chart, release) renders once per session."""

    workdir: Path
    _results: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    _docs: dict[str, list[Doc]] = field(default_factory=dict)

    @staticmethod
    def _key(values: Values, chart: Path, release: str) -> str:
        return json.dumps([str(chart), release, values], sort_keys=True)

    def _run(self, values: Values, chart: Path, release: str) -> subprocess.CompletedProcess[str]:
        key = self._key(values, chart, release)
        if key not in self._results:
            path = self.workdir / f"values-{hashlib.sha1(key.encode()).hexdigest()[:16]}.yaml"
            path.write_text(yaml.safe_dump(values))
            self._results[key] = helm("template", release, chart, "-n", "tuneloop", "-f", path, check=False)
        return self._results[key]

    def prefetch(self, jobs: Iterable[tuple[Values, Path, str]]) -> None:
        """Render many at once: helm runs as separate processes, so threads are enough."""
        todo = {self._key(v, c, r): (v, c, r) for v, c, r in jobs}
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda job: self._run(*job), todo.values()))

    def result(
        self, values: Values, chart: Path = CHART, release: str = RELEASE
    ) -> subprocess.CompletedProcess[str]:
        return self._run(values, chart, release)

    def docs(self, values: Values, chart: Path = CHART, release: str = RELEASE) -> list[Doc]:
        """The rendered objects (shared between callers: do not modify them)."""
        key = self._key(values, chart, release)
        if key not in self._docs:
            proc = self._run(values, chart, release)
            if proc.returncode != 0:
                pytest.fail(f"helm template failed with {values}:\n{proc.stderr}")
            self._docs[key] = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return self._docs[key]


# -- reading rendered objects


def all_docs(rendered: dict[str, list[Doc]]) -> Iterator[tuple[str, Doc]]:
    for name, docs in rendered.items():
        for doc in docs:
            yield name, doc


def unique_docs(rendered: dict[str, list[Doc]]) -> list[tuple[str, Doc]]:
    """Each distinct object once (value sets share most objects), with the first set that has it."""
    seen: dict[str, tuple[str, Doc]] = {}
    for name, doc in all_docs(rendered):
        # Ray's auth token is random per render; it must not defeat the de-duplication.
        key = json.dumps({**doc, "data": None} if doc["kind"] == "Secret" else doc, sort_keys=True)
        seen.setdefault(key, (name, doc))
    return list(seen.values())


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(kind: str, suffix: str = "") -> Callable[[list[Doc]], list[Doc]]:
    """A selector of the objects of one kind whose name ends with `suffix`."""
    return lambda docs: [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]


def one(docs: list[Doc], kind: str, name_suffix: str = "") -> Doc:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} named *{name_suffix}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def pod_specs(doc: Doc) -> list[Doc]:
    """Every pod spec inside a workload or Ray object."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "Job"):
        return [spec["template"]["spec"]]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if kind == "RayCluster":
        return ray_pods(spec)
    if kind == "RayJob":
        return [spec["submitterPodTemplate"]["spec"], *ray_pods(spec["rayClusterSpec"])]
    return []


def ray_pods(cluster: Doc) -> list[Doc]:
    """The head's and every worker group's pod spec of a RayCluster spec."""
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]


def containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_of(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# -- a chart copy with monitoring files

GENERATED_DASHBOARD = "zz-test-generated-overview.json"
GENERATED_ALERTS = ("zz-test-generated-serving.yaml", "zz-test-generated-drift.yaml")


def generated_dashboard() -> str:
    panel = {
        "id": 1,
        "type": "timeseries",
        "title": "Requests per second",
        "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0},
        "targets": [{"refId": "A", "expr": "sum(rate(tuneloop_requests_total[5m]))"}],
    }
    return json.dumps(
        {"title": "tuneloop test", "uid": "tuneloop-test", "schemaVersion": 39, "panels": [panel]}
    )


def generated_alerts(name: str, n_groups: int) -> str:
    groups = [
        {
            "name": f"{name}-{i}",
            "rules": [
                {
                    "alert": f"TuneloopTest{i}",
                    "expr": 'sum(rate(tuneloop_requests_total{status=~"5.."}[5m])) > 1',
                    "for": "10m",
                    "labels": {"severity": "warning"},
                    "annotations": {"summary": "test rule"},
                }
            ],
        }
        for i in range(n_groups)
    ]
    return yaml.safe_dump({"groups": groups})


def copy_chart_with_monitoring(root: Path, extra: Callable[[Path], None] | None = None) -> Path:
    """root/helm/tuneloop (links kept) beside root/monitoring: the real dashboards and alert files
    plus generated ones, and Python files the chart must leave out. Returns the chart folder."""
    shutil.copytree(CHART, root / "helm" / "tuneloop", symlinks=True)
    monitoring = root / "monitoring"
    for sub, pattern in (("dashboards", "*.json"), ("alerts", "*.yaml")):
        (monitoring / sub).mkdir(parents=True)
        for real in sorted((MONITORING / sub).glob(pattern)):
            shutil.copy(real, monitoring / sub / real.name)
    (monitoring / "dashboards" / GENERATED_DASHBOARD).write_text(generated_dashboard())
    (monitoring / "alerts" / GENERATED_ALERTS[0]).write_text(generated_alerts("tuneloop-test-serving", 2))
    (monitoring / "alerts" / GENERATED_ALERTS[1]).write_text(generated_alerts("tuneloop-test-drift", 1))
    # What the monitoring package holds besides its rule and dashboard files: never in the chart.
    (monitoring / "__init__.py").write_text('"""monitoring"""\n')
    (monitoring / "drift").mkdir()
    (monitoring / "drift" / "ks.py").write_text("x = 1\n")
    (monitoring / "__pycache__").mkdir()
    (monitoring / "__pycache__" / "metrics.cpython-311.pyc").write_bytes(b"\0")
    if extra:
        extra(monitoring)
    return root / "helm" / "tuneloop"
