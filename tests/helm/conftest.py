"""Fixtures of the chart tests: one cached renderer and one chart copy with monitoring files per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.helm import Renderer, copy_chart_with_monitoring


@pytest.fixture(scope="session")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    return Renderer(tmp_path_factory.mktemp("helm-values"))


@pytest.fixture(scope="session")
def monitoring_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart beside a monitoring/ holding the real files plus generated ones."""
    return copy_chart_with_monitoring(tmp_path_factory.mktemp("chart-copy"))
