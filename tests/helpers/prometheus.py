"""A real Prometheus for tests, and what tests need to check queries and rules against it.

Debian's prometheus package (scripts/install-prometheus.sh, run by `make test`) provides the
server and promtool. `start_prometheus` runs the server as a `ManagedProcess` (its own process
group, stopped by its PID) on a free 127.0.0.1 port, with a config of its own, a 1 s scrape interval
and its data under the test's tmp folder. `declared_metrics` lists every series
monitoring/metrics.py can export, so rules and dashboards are checked against it offline.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.metrics import MetricWrapperBase

from tuneloop.demo.prometheus import ScrapeTarget, prometheus_process
from tuneloop.monitoring import metrics
from tuneloop.platform.procs import ManagedProcess
from tuneloop.platform.settings import LOOPBACK

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
NO_PROMETHEUS = (
    "no /usr/bin/prometheus or /usr/bin/promtool: run scripts/install-prometheus.sh (make test does)"
)
SCRAPE_INTERVAL_S = 1

Result = list[dict[str, Any]]


def have_prometheus() -> bool:
    return PROMETHEUS.is_file() and PROMTOOL.is_file()


METRIC_NAME = re.compile(r"\btuneloop_[a-z0-9_]+")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def series_names(metric: MetricWrapperBase) -> set[str]:
    """The series names one metric object can export, children or not (a counter's `_total`, a
    histogram's `_bucket`/`_count`/`_sum`, their `_created`)."""
    return {family.name + s for family in metric.collect() for s in _SUFFIXES[family.type]}


def declared_metrics() -> dict[str, set[str]]:
    """Every series name monitoring/metrics.py declares, with its label names (`le` on buckets).

    prometheus_client has no public accessor for a metric's label names; `_labelnames` has been
    stable for years, and a test is the right place to lean on it.
    """
    declared: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            labels = set(metric._labelnames)
            for name in series_names(metric):
                declared[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return declared


@dataclass
class Prometheus:
    """A running server; queries go to its HTTP API (`/api/v1/...`)."""

    process: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _get(self, path: str, params: httpx.QueryParams) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=30)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params} answered {response.status_code}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> Result:
        """An instant vector (or scalar, as one unlabelled sample) at `at` (default: now)."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self._get("/api/v1/query", httpx.QueryParams(params))
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> Result:
        params = httpx.QueryParams({"query": expr, "start": start, "end": end, "step": step})
        data = self._get("/api/v1/query_range", params)
        return list(data["result"])

    def series(self, match: str, start: float | None = None) -> list[dict[str, str]]:
        params: dict[str, str | float] = {"match[]": match}
        if start is not None:
            params["start"] = start
        return list(self._get("/api/v1/series", httpx.QueryParams(params)))

    def wait_for(
        self, expr: str, done: Callable[[Result], bool], *, timeout: float = 30.0, what: str = ""
    ) -> Result:
        """Poll an instant query until `done(result)`; fail with the last result at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if done(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Prometheus: {what or expr} not reached within {timeout:.0f} s; last result {result}; "
                    f"log:\n{self.process.log_tail()}"
                )
            time.sleep(0.25)


def values(result: Result) -> list[float]:
    """Every sample value of an instant or range result, as floats (NaN included)."""
    out: list[float] = []
    for series in result:
        points = series.get("values") or [series["value"]]
        out.extend(float(value) for _, value in points)
    return out


def finite(result: Result) -> list[float]:
    return [v for v in values(result) if math.isfinite(v)]


def by_labels(result: Result, *names: str) -> dict[tuple[str, ...], float]:
    """An instant result as {(label values...): value}; a missing label reads as ""."""
    return {tuple(s["metric"].get(n, "") for n in names): float(s["value"][1]) for s in result}


@contextmanager
def start_prometheus(
    targets: Sequence[ScrapeTarget], workdir: Path, *, ready_timeout: float = 60.0
) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port scraping `targets` every second; stopped by its PID on exit."""
    process, port = prometheus_process(
        targets, workdir, binary=PROMETHEUS, interval_s=SCRAPE_INTERVAL_S, ready_timeout=ready_timeout
    )
    with process:
        yield Prometheus(process=process, port=port)
