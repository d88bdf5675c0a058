"""`tuneloop serve --in-engine` (TUNELOOP_IN_ENGINE=1): the gateway inside the engine's own server.

One process listens on the replica's port, the engine's; the gateway in it still checks keys,
routes aliases (LoRA versions included), rewrites ids and model names, records metrics and follows
promotions, and the engine's own routes answer only its private key. Real replica, real vLLM
engine, the official openai client; the tests run in file order, and the last two kill the engine,
then the parent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from helpers.gateway import Replica, children, publish_loras, start_gateway
from helpers.servers import listening_addresses

from tuneloop.platform.apikeys import create_key
from tuneloop.platform.procs import group_members

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replica(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    published = publish_loras(tiny_model_dir, tmp_path_factory, "in-engine", seeds=(1, 2))
    published.add("other", published.work / "bot1")
    registry = published.registry
    registry.promote("bot", "bot@1")
    keys = {
        "admin": create_key(registry, scopes=[], admin=True).secret,
        "bot": create_key(registry, scopes=["bot"], admin=False).secret,
        "other": create_key(registry, scopes=["other"], admin=False).secret,
    }
    env = {"TUNELOOP_IN_ENGINE": "1", "TUNELOOP_REGISTRY_POLL_S": "0.25"}
    with start_gateway(str(tiny_model_dir), published.home, extra_env=env) as gateway:
        yield Replica(gateway, str(tiny_model_dir), keys, registry, set(gateway.engine_pids()))


def test_the_engine_process_itself_listens_on_the_replicas_port(replica: Replica) -> None:
    gateway = replica.gateway
    group = set(group_members(next(iter(replica.engine_pids))))
    assert ("127.0.0.1", gateway.port) in listening_addresses(sorted(group))
    assert ("127.0.0.1", gateway.port) not in listening_addresses([gateway.process.pid])
    assert not listening_addresses([gateway.process.pid]), "the parent only supervises"


def test_completions_streamed_and_whole_through_the_gateway_in_the_engine(replica: Replica) -> None:
    client = replica.client("bot")
    whole = client.completions.create(model="bot", prompt="The river", max_tokens=5, temperature=0)
    assert whole.model == "bot" and whole.id.startswith("cmpl-") and whole.usage is not None
    assert whole.usage.completion_tokens == 5 and whole.choices[0].text
    events = list(
        client.completions.create(model="bot", prompt="The river", max_tokens=5, temperature=0, stream=True)
    )
    assert {e.model for e in events} == {"bot"} and len({e.id for e in events}) == 1
    assert events[0].id.startswith("cmpl-")
    assert "".join(e.choices[0].text for e in events if e.choices) == whole.choices[0].text
    chat = client.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.model == "bot" and chat.id.startswith("chatcmpl-")
    metrics = replica.metrics()
    served = [
        v
        for (name, labels), v in metrics.items()
        if name == "tuneloop_requests_total" and ("alias", "bot") in labels
    ]
    assert sum(served) >= 3


def test_keys_and_scopes_hold_and_the_engines_routes_need_its_own_key(replica: Replica) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=replica.gateway.base_url, api_key="sk-wrong", max_retries=0).models.list()
    body = {"model": "bot", "prompt": "x", "max_tokens": 1}
    assert replica.post("/v1/completions", body, key="other").status_code == 404  # not its scope
    for key in ("bot", "admin"):  # an engine route is no route of the gateway's, whatever the key
        answer = replica.post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/"}, key=key)
        assert answer.status_code in (404, 405), answer.text
    engine = httpx.get(
        f"{replica.gateway.url}/v1/models", headers=replica.gateway.engine_headers(), timeout=10
    )
    assert engine.status_code == 200 and engine.json()["data"][0]["id"] == replica.base


def test_the_engines_refusals_reach_the_client_as_openai_errors(replica: Replica) -> None:
    for stream in (False, True):
        body = {"model": "bot", "prompt": "word " * 2000, "max_tokens": 2, "stream": stream}
        answer = replica.post("/v1/completions", body)
        error = answer.json()["error"]
        assert answer.status_code == 400 and "maximum context length is 512" in error["message"]
        assert set(error) == {"message", "type", "param", "code"}


def test_a_promotion_reaches_the_gateway_in_the_engine(replica: Replica) -> None:
    client = replica.client("bot")
    replica.registry.promote("bot", "bot@2")
    deadline = time.monotonic() + 30
    version = None
    while time.monotonic() < deadline and version != "bot@2":
        raw = client.completions.with_raw_response.create(model="bot", prompt="a", max_tokens=1)
        version = raw.headers["x-tuneloop-version"]
        time.sleep(0.2)
    assert version == "bot@2"


def test_an_engine_that_dies_comes_back_with_its_gateway(replica: Replica) -> None:
    (guard,) = replica.gateway.engine_pids()
    (engine,) = children(guard)  # the vLLM server the gateway runs in
    os.kill(engine, signal.SIGKILL)
    deadline = time.monotonic() + 240  # the parent starts the engine again (about 25 s here)
    while True:
        assert time.monotonic() < deadline, "the engine (and the gateway in it) did not come back"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{replica.gateway.url}/ready", timeout=5).status_code == 200:
                break
        time.sleep(0.5)
    assert replica.gateway.engine_pids() != [guard]
    answer = replica.client("bot").completions.create(model="bot", prompt="a", max_tokens=2)
    assert answer.model == "bot" and answer.usage is not None and answer.usage.completion_tokens == 2


def test_the_engine_and_its_gateway_die_with_the_parent(replica: Replica) -> None:
    """Last in this file: SIGKILL the parent (`tuneloop serve`); the guard stops the engine."""
    groups = replica.gateway.engine_pids()
    os.kill(replica.gateway.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(group_members(pid) for pid in groups):
        assert time.monotonic() < deadline, "the engine outlived the parent"
        time.sleep(0.2)
