"""Reading the Grafana dashboards of monitoring/dashboards/: panels, their PromQL, template variables.

The queries of a dashboard are its panels' targets, its Prometheus annotations and its query
variables; `substitute` fills template variables in the way Grafana does before it sends a query, so
tests can run them against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.helm import MONITORING
from helpers.prometheus import METRIC_NAME, series_names
from tuneloop.monitoring import metrics

DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
# $x, ${x}, ${x:format} and the deprecated [[x]].
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class Query:
    """One PromQL query of a dashboard: a panel target, an annotation or a query variable."""

    dashboard: str
    where: str  # "panel '<title>' / <refId>", "annotation '<name>'", "variable '<name>'"
    expr: str
    instant: bool = False

    @property
    def metrics(self) -> set[str]:
        return set(METRIC_NAME.findall(self.expr))

    @property
    def variables(self) -> set[str]:
        return {_name(m) for m in VARIABLE.finditer(self.expr)}


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included (a collapsed row keeps its panels inside it)."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(path: Path) -> list[Query]:
    board, name = load(path), path.name
    found = [
        Query(name, f"panel {p['title']!r} / {t['refId']}", t["expr"], bool(t.get("instant")))
        for p in panels(board)
        if p["type"] != "row"
        for t in p.get("targets", [])
    ]
    found += [
        Query(name, f"annotation {a['name']!r}", a["expr"])
        for a in board.get("annotations", {}).get("list", [])
        if "expr" in a
    ]
    found += [
        Query(name, f"variable {v['name']!r}", v["query"], instant=True)
        for v in board["templating"]["list"]
        if v["type"] == "query"
    ]
    return found


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """The query as Grafana sends it; a variable the caller did not give fails the test."""

    def value(match: re.Match[str]) -> str:
        name = _name(match)
        if name not in variables:
            raise AssertionError(f"{expr!r} uses ${name}, which the test does not know")
        return variables[name]

    return VARIABLE.sub(value, expr)


def drop_nulls(value: Any) -> Any:
    """The schema types optional fields without null; Grafana treats null as absent."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def _name(match: re.Match[str]) -> str:
    return next(g for g in match.groups() if g)


# The loop's metrics: set by the test (nothing updates them yet), never exported by a gateway.
LOOP_METRICS = (
    metrics.EVAL_SCORE,
    metrics.DRIFT_SCORE,
    metrics.DRIFT_THRESHOLD,
    metrics.DRIFT_DETECTED,
    metrics.DRIFT_LAST_CHECK,
    metrics.FEEDBACK_ACCURACY,
    metrics.RETRAINS_STARTED,
    metrics.RETRAINS_SUCCEEDED,
    metrics.RETRAINS_FAILED,
    metrics.RETRAINS_REJECTED,
    metrics.PROMOTIONS,
    metrics.ROLLBACKS,
    *metrics.TRAINING_GAUGES.values(),
)
LOOP_SERIES = {name for metric in LOOP_METRICS for name in series_names(metric)}
TRAINING_SERIES = {name for metric in metrics.TRAINING_GAUGES.values() for name in series_names(metric)}
