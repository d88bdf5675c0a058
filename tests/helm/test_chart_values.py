"""The chart's values: every value documented (`# --`) and declared in values.schema.json, the schema
closed at every level, and a bad values file refused by `helm lint` with a message naming the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.helm import CHART, HELM, NO_HELM, Values, helm

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _schema_node(path: list[str]) -> dict[str, Any] | None:
    """The schema of a values path when every step is a declared property, else None (free-form)."""
    node = SCHEMA
    for key in path:
        props = _resolve(node).get("properties", {})
        if key not in props:
            return None
        node = props[key]
    return _resolve(node)


def _is_kubernetes_type(node: dict[str, Any]) -> bool:
    """Kubernetes types (resources, ...) are declared for their checks, not spelled out in defaults."""
    return str(_resolve(node).get("description", "")).startswith("Kubernetes ")


def test_schema_refuses_unknown_keys_at_every_level() -> None:
    def walk(node: Any, where: str) -> Iterator[str]:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                yield where
            for key, value in node.items():
                yield from walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{where}/{i}")

    assert list(walk(SCHEMA, "")) == []


def test_every_value_is_documented_and_declared() -> None:
    """Every value has a `# --` comment (helm-docs style), on itself or on a documented parent."""
    undocumented, undeclared = [], []
    comments: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("- "):
            comments = []
            continue
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        match = re.match(r'^(\s*)("[^"]+"|[\w.\-/]+):', line)
        if not match:
            comments = []
            continue
        indent, key = len(match[1]), match[2].strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k, _ in stack] + [key]
        documented = any(c.startswith("# --") for c in comments) or any(d for _, _, d in stack)
        stack.append((indent, key, documented))
        comments = []
        parent = _schema_node(path[:-1])
        if parent is None or "properties" not in parent:
            continue  # inside a free-form value (the example job spec, node selectors, ...)
        node = _schema_node(path)
        if node is None:
            undeclared.append(f"line {number}: {'.'.join(path)}")
        elif "properties" not in node and not documented:
            undocumented.append(f"line {number}: {'.'.join(path)}")
    assert not undeclared, undeclared
    assert not undocumented, f"values without a `# --` comment: {undocumented}"


def test_every_schema_property_has_a_default_in_values_yaml() -> None:
    """Every declared value is visible in values.yaml, down to Kubernetes types passed through whole."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, path: str) -> Iterator[str]:
        for key, sub in _resolve(node).get("properties", {}).items():
            if key == "global":
                continue
            if not isinstance(value, dict) or key not in value:
                yield f"{path}{key}"
            elif "properties" in _resolve(sub) and not _is_kubernetes_type(sub):
                yield from walk(sub, value[key], f"{path}{key}.")

    assert list(walk(SCHEMA, values, "")) == []


BAD_VALUES = [
    ("wrong-type", {"serving": {"replicaCount": "two"}}, "/serving", "replicaCount"),
    ("wrong-type-bool", {"gpu": {"enabled": "yes"}}, "/gpu", "enabled"),
    ("unknown-top-level", {"servings": {"replicaCount": 2}}, "", "servings"),
    ("unknown-nested", {"serving": {"engine": {"kvCache": 1024}}}, "/serving/engine", "kvCache"),
    (
        "unknown-deep",
        {"training": {"rayCluster": {"gpuWorkers": {"gpus": 2}}}},
        "/training/rayCluster/gpuWorkers",
        "gpus",
    ),
    ("bad-enum", {"artifacts": {"type": "gcs"}}, "/artifacts", "type"),
    (
        "bad-duration",
        {"monitoring": {"serviceMonitor": {"interval": "soon"}}},
        "/monitoring/serviceMonitor",
        "interval",
    ),
]


@pytest.mark.skipif(HELM is None, reason=NO_HELM)
@pytest.mark.parametrize(
    ("values", "where", "key"), [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES]
)
def test_bad_values_fail_lint_naming_the_key(tmp_path: Path, values: Values, where: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = helm("lint", "--strict", CHART, "-f", path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert key in output and f"'{where}" in output, output
