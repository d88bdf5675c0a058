"""The control API as users run it (`tuneloop control`, a subprocess on a free loopback port):
POST /v1/alerts needs the bearer token, bodies are bounded, and a locked registry never stalls the
event loop. The registry is a real SQLite file; the lock is a real exclusive transaction on it."""

from __future__ import annotations

import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tuneloop.platform.procs import ManagedProcess, free_port
from tuneloop.platform.registry import Registry
from tuneloop.platform.settings import LOOPBACK, child_env

TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))
FIRING = {"alerts": [{"status": "firing", "labels": {"alertname": "TuneloopDrift", "alias": "support"}}]}


def _control(home: Path, extra: dict[str, str]) -> ManagedProcess:
    port = free_port()
    env = child_env(
        {
            "TUNELOOP_HOME": str(home),
            "TUNELOOP_DB_URL": "",
            "TUNELOOP_CONTROL_TOKEN": "",
            "TUNELOOP_CONTROL_TOKEN_FILE": "",
            "TUNELOOP_SCHEDULER": "off",
            **extra,
        }
    )
    return ManagedProcess(
        [TUNELOOP, "control", "--port", str(port)],
        log_path=home / f"control-{port}.log",
        health_url=f"http://{LOOPBACK}:{port}/health",
        env=env,
        name="tuneloop-control",
        ready_timeout=60,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.add_version("support", base_model="m", method="lora", store=lambda n: f"mem://{n}")
    registry.promote("support", "support@1")
    registry.engine.dispose()
    return tmp_path


@pytest.fixture
def control(home: Path) -> Iterator[tuple[str, str]]:
    """A control process with no token configured: it makes one. Yields (url, token)."""
    with _control(home, {}) as process:
        token_file = home / "control_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) == 64
        yield process.health_url.removesuffix("/health"), token  # type: ignore[union-attr]


def test_alerts_need_the_token_while_health_and_metrics_stay_open(
    control: tuple[str, str], home: Path
) -> None:
    url, token = control
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"}):
        refused = httpx.post(f"{url}/v1/alerts", json=FIRING, headers=headers, timeout=10)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["code"] == "invalid_token"
    assert [e.kind for e in Registry(f"sqlite:///{home / 'registry.db'}").history("support")].count(
        "drift.alert"
    ) == 0
    accepted = httpx.post(
        f"{url}/v1/alerts", json=FIRING, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert accepted.status_code == 200 and accepted.json()["recorded"] == 1
    assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
    assert "tuneloop_retrains_started_total" in httpx.get(f"{url}/metrics", timeout=10).text


def test_an_oversized_body_is_refused_before_it_is_read(control: tuple[str, str]) -> None:
    url, token = control
    auth = {"Authorization": f"Bearer {token}"}
    big = b'{"alerts": [' + b" " * (2 << 20) + b"]}"
    response = httpx.post(f"{url}/v1/alerts", content=big, headers=auth, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"alerts": ['
        for _ in range(40):
            yield b" " * 65536
        yield b"]}"

    response = httpx.post(f"{url}/v1/alerts", content=chunks(), headers=auth, timeout=30)
    assert response.status_code == 413
    assert httpx.post(f"{url}/v1/alerts", json=FIRING, headers=auth, timeout=10).status_code == 200


def test_a_locked_registry_does_not_stall_health_checks(control: tuple[str, str], home: Path) -> None:
    url, token = control
    lock = sqlite3.connect(home / "registry.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every writer now waits (busy_timeout) until we commit
    result: dict[str, httpx.Response] = {}

    def post() -> None:
        result["alert"] = httpx.post(
            f"{url}/v1/alerts", json=FIRING, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    poster = threading.Thread(target=post)
    poster.start()
    try:
        time.sleep(0.5)  # the webhook is now waiting on the lock
        for _ in range(5):
            started = time.monotonic()
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0
        assert poster.is_alive(), "the webhook should still be waiting for the registry"
    finally:
        lock.execute("COMMIT")
        lock.close()
        poster.join(timeout=30)
    assert result["alert"].status_code == 200 and result["alert"].json()["recorded"] == 1


def test_a_configured_token_or_token_file_is_used(home: Path, tmp_path: Path) -> None:
    with _control(home, {"TUNELOOP_CONTROL_TOKEN": "from-the-environment"}) as process:
        url = process.health_url.removesuffix("/health")  # type: ignore[union-attr]
        ok = httpx.post(
            f"{url}/v1/alerts",
            json=FIRING,
            headers={"Authorization": "Bearer from-the-environment"},
            timeout=10,
        )
        assert ok.status_code == 200
    assert not (home / "control_token").exists()
    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text("from-a-file\n")
    with _control(home, {"TUNELOOP_CONTROL_TOKEN_FILE": str(token_file)}) as process:
        url = process.health_url.removesuffix("/health")  # type: ignore[union-attr]
        ok = httpx.post(
            f"{url}/v1/alerts", json=FIRING, headers={"Authorization": "Bearer from-a-file"}, timeout=10
        )
        assert ok.status_code == 200
