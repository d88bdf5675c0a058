"""Fixtures of the chart tests: one cached renderer and one chart copy with monitoring files per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.chart_values import FEATURES, LONG_RELEASE, VALUE_SETS
from helpers.helm import RELEASE, Doc, Renderer, copy_chart_with_monitoring


@pytest.fixture(scope="session")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    return Renderer(tmp_path_factory.mktemp("helm-values"))


@pytest.fixture(scope="session")
def monitoring_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart beside a monitoring/ holding the real files plus generated ones."""
    return copy_chart_with_monitoring(tmp_path_factory.mktemp("chart-copy"))


@pytest.fixture(scope="session")
def rendered(renderer: Renderer, monitoring_chart: Path) -> dict[str, list[Doc]]:
    """Every value set rendered, by name, plus `long-release-name` (a 53-character release name).

    Everything this module renders is rendered here at once, in parallel: the value sets, and each
    optional feature on and off.
    """
    jobs = [(v, monitoring_chart, RELEASE) for v in VALUE_SETS.values()]
    jobs.append(({}, monitoring_chart, LONG_RELEASE))
    jobs += [(f.on, f.chart(monitoring_chart), RELEASE) for f in FEATURES]
    jobs += [(f.off, f.chart(monitoring_chart), RELEASE) for f in FEATURES]
    renderer.prefetch(jobs)
    out = {name: renderer.docs(values, monitoring_chart) for name, values in VALUE_SETS.items()}
    out["long-release-name"] = renderer.docs({}, monitoring_chart, LONG_RELEASE)
    return out
