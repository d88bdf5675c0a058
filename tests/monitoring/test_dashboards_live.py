"""Every query of the Grafana dashboards answers, against a real Prometheus (the slow half of the
dashboard tests; test_dashboards.py explains what is served from where and checks the files).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers.dashboards import (
    DASHBOARDS,
    LOOP_METRICS,
    LOOP_SERIES,
    TRAINING_SERIES,
    Query,
    queries,
    substitute,
)
from helpers.gateway import publish_loras, start_gateway
from helpers.prometheus import (
    NO_PROMETHEUS,
    Prometheus,
    ScrapeTarget,
    by_labels,
    finite,
    have_prometheus,
    start_prometheus,
)
from prometheus_client import start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from tuneloop.monitoring import metrics
from tuneloop.platform.apikeys import create_key
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.procs import free_port
from tuneloop.platform.registry.tables import VersionStatus
from tuneloop.platform.settings import LOOPBACK

# -- the real thing


@dataclass(frozen=True)
class Traffic:
    """What the test sends through the gateway, by (alias label, status): the known counts."""

    alias_ok: int = 8  # whole completions to the alias "bot"
    alias_streams: int = 4  # streaming completions to "bot": time to first token
    alias_too_long: int = 2  # "bot" with max_tokens past the context: the engine's 400
    base_chat: int = 3  # chat completions to the base model: alias ""
    pinned: int = 3  # completions to "bot@2": alias "", loads bot@2 and evicts bot@1
    unknown: int = 2  # an unknown model: 404, alias ""
    max_tokens: int = 4

    def expected(self) -> dict[tuple[str, str], float]:
        return {
            ("bot", "200"): self.alias_ok + self.alias_streams,
            ("bot", "400"): self.alias_too_long,
            ("", "200"): self.base_chat + self.pinned,
            ("", "404"): self.unknown,
        }

    def generated_tokens(self) -> float:
        return (self.alias_ok + self.alias_streams + self.base_chat + self.pinned) * self.max_tokens


class _LoopOnly(Collector):
    """The loop's metrics out of monitoring/metrics.REGISTRY, and nothing else: the exporter must
    not also serve the test process's copies of the gateway's metrics."""

    def __init__(self) -> None:
        self._names = {family.name for metric in LOOP_METRICS for family in metric.collect()}

    def collect(self) -> Iterator[Metric]:
        return (family for family in metrics.REGISTRY.collect() if family.name in self._names)


@pytest.fixture
def loop_exporter() -> Iterator[int]:
    """This process serves the loop's metric objects on a free loopback port; stopped at teardown."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LoopOnly())
    port = free_port()
    server, thread = start_http_server(port, addr=LOOPBACK, registry=registry)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _set_loop_baseline(alias: str) -> None:
    """Values the loop would have set before the test's events: counters at 0, a first evaluation."""
    metrics.declare_alias(alias)
    metrics.EVAL_SCORE.labels(alias, f"{alias}@1", "golden", "exact_match").set(0.72)
    metrics.FEEDBACK_ACCURACY.labels(alias).set(0.8)
    for detector, score, threshold in (("embedding", 0.01, 0.05), ("prompt_length", 0.02, 0.2)):
        metrics.DRIFT_SCORE.labels(alias, detector).set(score)
        metrics.DRIFT_THRESHOLD.labels(alias, detector).set(threshold)
        metrics.DRIFT_DETECTED.labels(alias, detector).set(0)
        metrics.DRIFT_LAST_CHECK.labels(alias, detector).set(time.time())


def _set_training(artifacts: Path, adapter: str) -> None:
    """A running job's curves as its writer puts them in the store, exported as the control process
    exports them (monitoring/control/app.py): the training dashboard's data."""
    from tuneloop.platform import curves
    from tuneloop.train.progress import TrainingCurves

    store = ArtifactStore(str(artifacts))
    writer = TrainingCurves(store.root_url, "job-1", "job-1")
    for step, evaluated in ((2, False), (4, True), (5, False)):
        point = {"step": step, "loss": 2.0 / step, "lr": 1e-4, "grad_norm": 0.7}
        report = {"step": step, "total_steps": 10, "tokens_per_s": 900.0, "eta_s": 30.0, "curve": [point]}
        writer.after_report(None, [{**report, "evaluated": evaluated, "val_loss": 1.1}], None)
    latest = curves.latest(store, "job-1")
    assert latest is not None and latest["val_loss"] == 1.1
    metrics.set_training({("job-1", adapter): latest})


def _loop_events(alias: str) -> None:
    """A drift, a retrain, a rejected and a promoted candidate, a rollback: one cycle of the loop."""
    metrics.DRIFT_SCORE.labels(alias, "embedding").set(0.31)
    metrics.DRIFT_DETECTED.labels(alias, "embedding").set(1)
    metrics.DRIFT_LAST_CHECK.labels(alias, "embedding").set(time.time())
    metrics.FEEDBACK_ACCURACY.labels(alias).set(0.61)
    metrics.RETRAINS_STARTED.labels(alias).inc(2)
    metrics.RETRAINS_FAILED.labels(alias).inc()
    metrics.RETRAINS_SUCCEEDED.labels(alias).inc()
    metrics.RETRAINS_REJECTED.labels(alias, "not_better").inc()
    metrics.EVAL_SCORE.labels(alias, f"{alias}@2", "golden", "exact_match").set(0.81)
    metrics.PROMOTIONS.labels(alias).inc()
    metrics.ROLLBACKS.labels(alias).inc()


def _drive(client: openai.OpenAI, base: str, traffic: Traffic, prom: Prometheus) -> None:
    """The known requests, with the official client, in two phases.

    A labelled series is born at its first observation, and a series whose first scraped sample
    already holds all its requests has a rate of 0 (and a histogram quantile of 0/0: NaN). So one
    request of each kind goes first and is scraped, then the rest follows, as steady traffic would.
    """
    common: dict[str, Any] = {
        "max_tokens": traffic.max_tokens,
        "temperature": 0.0,
        "extra_body": {"ignore_eos": True},
    }

    def whole(model: str) -> None:
        client.completions.create(model=model, prompt="The river runs past", **common)

    def stream() -> None:
        # Read the body to its end, not just to `[DONE]`: the gateway marks a stream finished only
        # at the engine's EOF, so a client that hangs up right after `[DONE]` is sometimes counted
        # as 499 (client gone), and the request counts would not be exact.
        with client.completions.with_streaming_response.create(
            model="bot", prompt="Once upon", stream=True, **common
        ) as response:
            events = [line for line in response.iter_lines() if line.startswith("data:")]
        assert len(events) > 2 and events[-1] == "data: [DONE]", events

    def chat() -> None:
        client.chat.completions.create(model=base, messages=[{"role": "user", "content": "Hi"}], **common)

    def too_long() -> None:
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="bot", prompt="x", max_tokens=100_000)

    def unknown() -> None:
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="no-such-model", prompt="x", max_tokens=1)

    first = (lambda: whole("bot"), stream, chat, lambda: whole("bot@2"), too_long, unknown)
    for send in first:
        send()
    prom.wait_for(f"sum(tuneloop_requests_total) == {len(first)}", bool, what="the first requests scraped")
    # bot@2 is resident now; "bot" loads bot@1 back (evicting bot@2: one adapter may stay resident),
    # the pinned ones bot@2 again, and the last two "bot" bot@1 again.
    for _ in range(traffic.alias_ok - 3):
        whole("bot")
    for _ in range(traffic.alias_streams - 1):
        stream()
    for _ in range(traffic.base_chat - 1):
        chat()
    for _ in range(traffic.pinned - 1):
        whole("bot@2")
    for _ in range(2):
        whole("bot")
    for _ in range(traffic.alias_too_long - 1):
        too_long()
    for _ in range(traffic.unknown - 1):
        unknown()


def _check(
    prom: Prometheus, query: Query, variables: Mapping[str, str], start: float, end: float
) -> str | None:
    """None if the query returns at least one finite value over [start, end]; else why not."""
    expr = substitute(query.expr, variables)
    if query.where.startswith("variable"):
        # label_values(selector, label): what Grafana asks /api/v1/series for.
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", expr)
        assert match, f"{query.where}: only label_values(selector, label) is supported here: {expr}"
        found = {s.get(match[2]) for s in prom.series(match[1], start=start)} - {None, ""}
        return None if found else f"{query.where}: {expr} lists no values"
    result = prom.query(expr, at=end) if query.instant else prom.query_range(expr, start, end)
    return None if finite(result) else f"{query.where}: {expr} -> {result or 'no series'}"


@pytest.mark.slow
@pytest.mark.skipif(not have_prometheus(), reason=NO_PROMETHEUS)
def test_every_query_returns_data_from_a_real_prometheus(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, loop_exporter: int
) -> None:
    published = publish_loras(tiny_model_dir, tmp_path_factory, "dash", seeds=(1, 2))
    home, registry = published.home, published.registry
    registry.promote("bot", "bot@1")
    registry.set_status("bot@2", VersionStatus.RETIRED)  # candidates are for admin keys; "bot" pins it
    keys = {
        "bot": create_key(registry, scopes=["bot"], admin=False).secret,
        "admin": create_key(registry, scopes=[], admin=True).secret,  # Prometheus scrapes with it
    }
    _set_loop_baseline("bot")
    _set_training(home / "artifacts", "bot")
    traffic = Traffic()
    env = {"TUNELOOP_MAX_RESIDENT_ADAPTERS": "1", "TUNELOOP_REGISTRY_POLL_S": "0.25"}
    started = time.monotonic()
    with start_gateway(str(tiny_model_dir), home, extra_env=env) as gateway:
        gateway_ready = time.monotonic() - started
        targets = [
            ScrapeTarget("gateway", gateway.port, "/metrics", bearer=keys["admin"]),
            ScrapeTarget("loop", loop_exporter),
        ]
        with start_prometheus(targets, tmp_path_factory.mktemp("prometheus")) as prom:
            # Counters must be seen at 0 before they move, or increase() has nothing to compare.
            prom.wait_for(
                'count(up == 1) == 2 and count(tuneloop_retrains_started_total{alias="bot"}) == 1'
                " and count(tuneloop_engine_up == 1) == 1",
                bool,
                what="both targets scraped, the engine up",
            )
            window_start = time.time() - 2
            client = openai.OpenAI(base_url=gateway.base_url, api_key=keys["bot"], max_retries=0, timeout=120)
            _drive(client, str(tiny_model_dir), traffic, prom)
            _loop_events("bot")
            registry.promote("bot", "bot@2")  # the gateways switch: the "Alias switches" annotation
            total = sum(traffic.expected().values())
            prom.wait_for(
                f"sum(tuneloop_requests_total) == {total}"
                ' and on() sum(tuneloop_alias_switches_total{alias="bot"}) == 1'
                ' and on() sum(tuneloop_rollbacks_total{alias="bot"}) == 1',
                bool,
                what=f"{total} requests, 1 alias switch and the loop's events scraped",
            )
            time.sleep(3)  # a few more scrapes, so rates over the last window have two points
            window_end = time.time()
            _check_counts(prom, traffic)
            report = _check_all_queries(prom, window_start, window_end)
    took = time.monotonic() - started
    print(f"\ngateway ready after {gateway_ready:.1f} s; whole test {took:.1f} s\n{report}")


def _check_counts(prom: Prometheus, traffic: Traffic) -> None:
    """The gateway's counters, as Prometheus scraped them, equal what was sent."""
    counted = by_labels(prom.query("sum by (alias, status) (tuneloop_requests_total)"), "alias", "status")
    assert counted == traffic.expected()
    generated = prom.query("sum(tuneloop_generation_tokens_total)")
    assert float(generated[0]["value"][1]) == traffic.generated_tokens()
    loads = by_labels(
        prom.query("sum by (adapter, result) (tuneloop_adapter_loads_total)"), "adapter", "result"
    )
    assert loads.get(("bot", "ok"), 0) >= 3, loads  # bot@1 at start, bot@2 pinned, bot@1 again, ...
    unloads = by_labels(prom.query("sum by (reason) (tuneloop_adapter_unloads_total)"), "reason")
    assert unloads.get(("evicted",), 0) >= 2, unloads


def _check_all_queries(prom: Prometheus, start: float, end: float) -> str:
    """Every query of every dashboard, with `alias` at All and at "bot"; failures listed together."""
    span = f"{math.ceil(end - start) + 1}s"
    failures: list[str] = []
    lines = []
    for path in DASHBOARDS:
        for query in queries(path):
            loop = query.metrics <= LOOP_SERIES
            assert loop or not (query.metrics & LOOP_SERIES), (
                f"{query.where} mixes the loop's and the gateway's metrics"
            )
            source = "set values (loop exporter)" if loop else "real gateway traffic"
            if query.metrics <= TRAINING_SERIES:
                source = "a job's curves, exported (loop exporter)"
            if path.name == "tuneloop-serving.json" or "Alias switches" in query.where:
                assert not loop, f"{query.where} should be proved against the gateway"
            for alias in (".*", "bot"):
                variables = {
                    "alias": alias,
                    "detector": ".*",
                    "adapter": ".*",
                    "job": ".*",
                    "datasource": "prometheus",
                    "__rate_interval": "1m",
                    "__interval": "15s",
                    "__range": span,
                }
                if (problem := _check(prom, query, variables, start, end)) is not None:
                    failures.append(f"[alias={alias}] {problem}")
            lines.append(f"  {path.name:24} {query.where:70} {source}")
    assert not failures, "queries without data:\n" + "\n".join(failures)
    return "every query returned data:\n" + "\n".join(lines)


def test_the_loop_exporter_serves_only_the_loop_metrics(loop_exporter: int) -> None:
    """The split the slow test relies on: this process never serves the gateway's series."""
    import httpx

    metrics.REQUESTS.labels("completions", "x", "x@1", "200").inc()  # a gateway metric in this process
    metrics.declare_alias("exporter-check")
    text = httpx.get(f"http://{LOOPBACK}:{loop_exporter}/metrics", timeout=10).text
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }
    assert "tuneloop_retrains_started_total" in names
    assert names <= LOOP_SERIES, names - LOOP_SERIES
