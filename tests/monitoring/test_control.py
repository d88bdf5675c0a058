"""The control API on a real uvicorn server on a free loopback port: health, metrics, alert webhook."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from tuneloop.monitoring.control import create_app
from tuneloop.monitoring.policy import DRIFT_ALERT
from tuneloop.platform.procs import free_port
from tuneloop.platform.registry import Registry
from tuneloop.platform.settings import LOOPBACK


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.add_version("support", base_model="m", method="lora", store=lambda n: f"mem://{n}")
    reg.promote("support", "support@1")
    return reg


@pytest.fixture
def control_url(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TUNELOOP_RETRAIN_SUSTAIN", "2")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(registry), host=LOOPBACK, port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://{LOOPBACK}:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_health_and_metrics(control_url: str) -> None:
    assert httpx.get(f"{control_url}/health").json() == {"status": "ok"}
    text = httpx.get(f"{control_url}/metrics").text
    assert "tuneloop_eval_score" in text and "tuneloop_retrains_started_total" in text


def firing(alias: str) -> dict[str, object]:
    return {"status": "firing", "labels": {"alertname": "TuneloopDrift", "alias": alias}}


def test_alert_webhook_records_and_asks_the_policy(control_url: str, registry: Registry) -> None:
    body = {"version": "4", "status": "firing", "alerts": [firing("support"), firing("unknown")]}
    first = httpx.post(f"{control_url}/v1/alerts", json=body)
    assert first.status_code == 200 and first.json() == {"recorded": 1, "ignored": 1, "retrain_due": []}
    second = httpx.post(f"{control_url}/v1/alerts", json={"alerts": [firing("support")]})
    assert second.json()["retrain_due"] == ["support"]  # sustained: 2 firing alerts with sustain=2
    kinds = [e.kind for e in registry.history("support")]
    assert kinds.count(DRIFT_ALERT) == 2 and kinds[-1] == "retrain.due"


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"alerts": [{"status": "maybe", "labels": {}}]}'])
def test_bad_webhook_body_is_400(control_url: str, body: bytes) -> None:
    response = httpx.post(f"{control_url}/v1/alerts", content=body)
    assert response.status_code == 400 and "Alertmanager" in response.json()["error"]["message"]
