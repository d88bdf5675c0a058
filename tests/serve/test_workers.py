"""`tuneloop serve` with 2 gateway workers (TUNELOOP_WORKERS=2): one engine, both workers serving,
metrics summed across them, promotions reaching both, everything stopped with the parent.

Real replica, real vLLM engine, the official openai client; the tests run in file order and the
last one kills the parent with SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.gateway import Replica, publish_loras, start_gateway
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tuneloop.platform.apikeys import create_key
from tuneloop.platform.procs import group_members

pytestmark = pytest.mark.slow

REQUESTS = 24


@pytest.fixture(scope="module")
def replica(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    published = publish_loras(tiny_model_dir, tmp_path_factory, "workers", seeds=(1, 2))
    home, registry = published.home, published.registry
    registry.promote("bot", "bot@1")
    keys = {"admin": create_key(registry, scopes=[], admin=True).secret}
    env = {"TUNELOOP_WORKERS": "2", "TUNELOOP_REGISTRY_POLL_S": "0.25", "TUNELOOP_CAPTURE_ENABLED": "0"}
    with start_gateway(str(tiny_model_dir), home, extra_env=env) as gateway:
        yield Replica(gateway, str(tiny_model_dir), keys, registry, set(gateway.engine_pids()))


def workers(replica: Replica) -> list[int]:
    """The parent's worker processes (spawned Python processes that are not the engine's guard)."""
    pids = []
    for pid in group_members(replica.gateway.process.pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if pid != replica.gateway.process.pid and b"multiprocessing.spawn" in cmdline:
            pids.append(pid)
    return pids


def metrics_dir(replica: Replica) -> Path:
    return replica.gateway.home / "run" / f"metrics-{replica.gateway.process.pid}"


def per_process(replica: Replica, pid: int, name: str, tmp: Path) -> float:
    """Sum of metric `name` as process `pid` alone counted it (its own multiprocess files)."""
    tmp.mkdir()
    for file in metrics_dir(replica).glob(f"*_{pid}.db"):
        shutil.copy(file, tmp / file.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp))
    text = generate_latest(registry).decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def fresh_request(replica: Replica, model: str) -> httpx.Response:
    """One completion on a new connection, so the kernel may hand it to either worker."""
    body = {"model": model, "prompt": "The river", "max_tokens": 2, "ignore_eos": True}
    with httpx.Client(timeout=60) as client:
        return client.post(
            f"{replica.gateway.base_url}/completions", json=body, headers=replica.auth("admin")
        )


def test_one_engine_and_two_workers_that_both_serve(replica: Replica, tmp_path: Path) -> None:
    assert len(replica.engine_pids) == 1, "the engine is started once, by the parent"
    pids = workers(replica)
    assert len(pids) == 2
    for _ in range(REQUESTS):
        assert fresh_request(replica, "bot").status_code == 200
    served = {pid: per_process(replica, pid, "tuneloop_requests_total", tmp_path / str(pid)) for pid in pids}
    assert sum(served.values()) == REQUESTS
    assert all(count > 0 for count in served.values()), f"a worker got no request: {served}"


def test_metrics_are_summed_across_workers(replica: Replica) -> None:
    before = replica.metrics()
    for _ in range(REQUESTS):
        assert fresh_request(replica, "bot").status_code == 200
    after = replica.metrics()
    key = (
        "tuneloop_requests_total",
        (("alias", "bot"), ("endpoint", "completions"), ("status", "200"), ("version", "bot@1")),
    )
    assert after[key] - before.get(key, 0.0) == REQUESTS  # whichever worker answered /metrics
    generated = ("tuneloop_generation_tokens_total", (("alias", "bot"), ("version", "bot@1")))
    assert after[generated] - before.get(generated, 0.0) == 2 * REQUESTS
    assert after[("tuneloop_requests_in_flight", (("alias", "bot"), ("version", "bot@1")))] == 0
    assert after[("tuneloop_engine_up", ())] == 1


def test_a_promotion_reaches_every_worker_within_two_seconds(replica: Replica) -> None:
    switches = ("tuneloop_alias_switches_total", (("alias", "bot"),))
    before = replica.metrics().get(switches, 0.0)
    promoted = time.monotonic()
    replica.registry.promote("bot", "bot@2")
    while replica.metrics().get(switches, 0.0) < before + 2:  # one switch per worker
        assert time.monotonic() - promoted < 2.0, "a worker did not switch within 2 s"
        time.sleep(0.02)
    answered = {fresh_request(replica, "bot").headers["x-tuneloop-version"] for _ in range(REQUESTS)}
    assert answered == {"bot@2"}


def test_every_worker_and_the_engine_stop_when_the_parent_is_killed(replica: Replica) -> None:
    parent = replica.gateway.process.pid
    pids = workers(replica)
    os.kill(parent, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) or any(group_members(pid) for pid in replica.engine_pids):
        assert time.monotonic() < deadline, "a worker or the engine outlived the parent"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}
