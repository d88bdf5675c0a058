"""The Grafana dashboards of monitoring/dashboards/: valid for Grafana, and every query answers.

No Grafana server can run here, so the fast tests check the files against the JSON Schema of
@grafana/schema (../shared/schemas/; null values dropped first: the generated schema types optional
fields without null, and Grafana reads null as absent), and check what that schema cannot: it does
not forbid unknown keys, so a misspelt key would pass it; every panel must read the `${datasource}`
variable and have targets; every metric, label and variable a query names must exist.

The slow test runs every query (panels, annotations, variables) against a real Prometheus with the
template variables substituted as Grafana would, and requires data:
- against a REAL gateway (`tuneloop serve` + vLLM over the tiny model, driven with the openai
  client, scraped at /metrics with an admin key): every panel of tuneloop-serving.json, its `alias`
  variable, and the "Alias switches (gateways)" annotation of both dashboards;
- against SET values: every panel of tuneloop-drift.json, its `alias` and `detector` variables and
  its "Promotions" / "Rollbacks" annotations. Nothing updates the loop's metrics yet (the loop is
  built next), so the test sets the SAME metric objects from monitoring/metrics.py and serves only
  those from this process (prometheus_client's start_http_server on a loopback port);
- against curves a job's writer (train/progress.TrainingCurves) put in an artifact store: every
  panel and variable of tuneloop-training.json, its gauges set from them as the control process
  sets them for running jobs, served by the same exporter.
The test asserts that split (by the metrics each query names) and prints it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers.dashboards import (
    DASHBOARDS,
    DATASOURCE,
    GRAFANA_BUILTINS,
    Query,
    drop_nulls,
    load,
    panels,
    queries,
)
from helpers.helm import REPO
from helpers.prometheus import (
    declared_metrics,
)

SCHEMA = REPO.parent / "shared" / "schemas" / "grafana-dashboard.schema.json"
NO_SCHEMA = f"{SCHEMA} is absent: the Grafana dashboard schema ships beside the repository, not in it"
PANEL_TYPES = {"timeseries", "stat", "state-timeline", "row"}
# Fields of a Prometheus query and of a Prometheus annotation, which the schema leaves to the plugin.
TARGET_KEYS = {"datasource", "refId", "expr", "legendFormat", "editorMode", "range", "instant", "format"}
PROMETHEUS_ANNOTATION_KEYS = {"expr", "step", "titleFormat", "textFormat", "tagKeys", "useValueForTime"}
SCRAPE_LABELS = {"instance", "job"}
BY = re.compile(r"\bby\s*\(([^)]*)\)")
MATCHER = re.compile(r"[{,]\s*(\w+)\s*(?:=~|!~|!=|=)\s*\"")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


# -- offline checks


def test_there_are_serving_drift_and_training_dashboards() -> None:
    names = {p.name for p in DASHBOARDS}
    assert names >= {"tuneloop-serving.json", "tuneloop-drift.json", "tuneloop-training.json"}
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids), uids


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    if not SCHEMA.is_file():
        pytest.skip(NO_SCHEMA)
    return dict(json.loads(SCHEMA.read_text()))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_for_the_grafana_schema(path: Path, schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
        for e in validator.iter_errors(drop_nulls(load(path)))
    ]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_only_keys_grafana_knows(path: Path, schema: dict[str, Any]) -> None:
    """The schema allows any extra key, so a misspelt one ("datasouce") would validate; not here."""
    defs = schema["definitions"]

    def known(name: str) -> set[str]:
        return set(defs[name]["properties"])

    board = load(path)
    problems = [f"dashboard: {k}" for k in set(board) - known("Dashboard")]
    for panel in panels(board):
        allowed = known("RowPanel") if panel["type"] == "row" else known("Panel")
        problems += [f"panel {panel.get('title')!r}: {k}" for k in set(panel) - allowed]
        problems += [
            f"panel {panel.get('title')!r} fieldConfig.defaults: {k}"
            for k in set(panel.get("fieldConfig", {}).get("defaults", {})) - known("FieldConfig")
        ]
        for target in panel.get("targets", []):
            problems += [f"panel {panel.get('title')!r} target: {k}" for k in set(target) - TARGET_KEYS]
    for variable in board["templating"]["list"]:
        problems += [f"variable {variable['name']}: {k}" for k in set(variable) - known("VariableModel")]
    for note in board["annotations"]["list"]:
        extra = set(note) - known("AnnotationQuery") - PROMETHEUS_ANNOTATION_KEYS
        problems += [f"annotation {note['name']}: {k}" for k in extra]
    assert not problems, problems


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_reads_the_datasource_variable_and_has_targets(path: Path) -> None:
    board = load(path)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # Filters: `alias` on the serving and drift boards, `adapter` and `job` on the training one.
    filters = [v for v in variables.values() if v["type"] == "query"]
    assert filters and ("alias" in variables or "job" in variables), list(variables)
    for variable in filters:
        assert variable["datasource"] == DATASOURCE, variable["name"]
        assert variable["includeAll"] and variable["allValue"] == ".*", variable["name"]
    ids = [p["id"] for p in panels(board)]
    assert len(set(ids)) == len(ids), f"panel ids repeat: {ids}"
    for panel in panels(board):
        assert panel["type"] in PANEL_TYPES, panel["type"]
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel["datasource"] == DATASOURCE, title
        assert panel.get("description"), f"{title}: say what the panel shows and why it matters"
        targets = panel.get("targets", [])
        assert targets, f"{title}: no targets"
        assert len({t["refId"] for t in targets}) == len(targets), f"{title}: refIds repeat"
        for target in targets:
            assert target["datasource"] == DATASOURCE and target["expr"].strip(), (title, target)
    for note in board["annotations"]["list"]:
        assert note["datasource"] == DATASOURCE and note["expr"].strip(), note["name"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_do_not_overlap_on_the_grid(path: Path) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load(path)["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel.get("title")
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel.get('title')!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = str(panel.get("title"))


def _labels_kept(query: Query, declared: dict[str, set[str]]) -> tuple[set[str], set[str]]:
    """(labels the query's matchers and `by` clauses name, labels its result keeps)."""
    metric_labels = {label for m in query.metrics for label in declared.get(m, set())} | SCRAPE_LABELS
    grouped = {g.strip() for clause in BY.findall(query.expr) for g in clause.split(",") if g.strip()}
    return grouped | set(MATCHER.findall(query.expr)), grouped or metric_labels


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_use_declared_metrics_labels_and_variables(path: Path) -> None:
    """A misspelt metric or label still "returns data" in places (`sum by (typo)`), so check names."""
    board = load(path)
    declared = declared_metrics()
    defined = {v["name"] for v in board["templating"]["list"]} | GRAFANA_BUILTINS
    legends = {
        f"panel {p['title']!r} / {t['refId']}": t.get("legendFormat", "")
        for p in panels(board)
        for t in p.get("targets", [])
    }
    legends |= {f"annotation {a['name']!r}": a.get("titleFormat", "") for a in board["annotations"]["list"]}
    for query in queries(path):
        assert query.metrics, f"{query.where}: names no tuneloop_ metric"
        assert query.metrics <= set(declared), f"{query.where}: {query.metrics - set(declared)} undeclared"
        assert query.variables <= defined, f"{query.where}: undefined variables {query.variables - defined}"
        named, kept = _labels_kept(query, declared)
        known = {label for m in query.metrics for label in declared[m]} | SCRAPE_LABELS
        assert named <= known, f"{query.where}: labels {named - known} are not the metrics' labels"
        shown = set(LEGEND_LABEL.findall(legends.get(query.where, "")))
        assert shown <= kept, f"{query.where}: the legend shows {shown - kept}, which the query drops"
