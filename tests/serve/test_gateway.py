"""The gateway end to end: `tuneloop serve` with its real vLLM engine, called with the official openai client.

One replica per module (an engine start costs ~20-50 s on 2 cores). The registry holds, for the
tiny model: `bot` (versions 1, 2, 3 from different random LoRA seeds, so their greedy outputs
differ), `other` (another team's adapter), and versions the replica must refuse: an IA3 adapter, a
prompt-tuned one and a full fine-tune. Keys: one scoped to `bot`, one to `other`, one admin. The
tests run in file order; the last one kills the engine.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from helpers.bad_requests import bad_bodies
from helpers.gateway import Replica, publish_loras, start_gateway, write_peft_like
from helpers.servers import listening_addresses
from helpers.stored import store_as_is
from helpers.tiny_model import build_random_lora
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tuneloop.platform.apikeys import create_key
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.procs import group_members
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import VersionStatus
from tuneloop.serve.request.hooks import prompt_embeds_hook

pytestmark = pytest.mark.slow

PROMPT = "The river runs past"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about the sea."}]
NO_EOS = {"ignore_eos": True}  # a random model may stop at once; fixed lengths make outputs comparable
MAX_IN_FLIGHT = 12
STREAMS = 8
SERVED_NAME = "tiny-base"


@pytest.fixture(scope="module")
def replica(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    published = publish_loras(tiny_model_dir, tmp_path_factory, "serve", seeds=(1, 2, 4))
    home, work, registry, store, add = (
        published.home,
        published.work,
        published.registry,
        published.store,
        published.add,
    )
    add("other", build_random_lora(tiny_model_dir, work / "other", rank=8, seed=3))
    add("ia3ad", write_peft_like(work / "ia3", tiny_model_dir, "IA3", {"ia3_l": (1, 256)}))
    add(
        "soft",
        write_peft_like(work / "soft", tiny_model_dir, "PROMPT_TUNING", {"prompt_embeddings": (4, 128)}),
    )
    _add_full_finetune(registry, store, tiny_model_dir, work / "ft")
    registry.promote("bot", "bot@1")
    # Released before (retired), so keys scoped to `bot` may pin them; candidates are admin-only.
    registry.set_status("bot@2", VersionStatus.RETIRED)
    registry.set_status("bot@3", VersionStatus.RETIRED)
    registry.promote("other", "other@1")
    registry.promote("ia3-bot", "ia3ad@1")  # bypassing the CLI's check: the gateway must refuse it too
    registry.promote("soft-bot", "soft@1")
    keys = {
        "bot": create_key(registry, scopes=["bot"], admin=False).secret,
        "other": create_key(registry, scopes=["other"], admin=False).secret,
        "admin": create_key(registry, scopes=[], admin=True).secret,
    }
    env = {
        "TUNELOOP_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
        "TUNELOOP_MAX_RESIDENT_ADAPTERS": "3",
        # Capture on, with a working database: tests/serve/test_gateway_prompt_tuned.py.
        "TUNELOOP_CAPTURE_ENABLED": "0",
        "TUNELOOP_CAPTURE_DB_URL": f"sqlite:///{home / 'capture.db'}",
        # Clients call the base by this name; the folder `--model` names keeps working (test below).
        "TUNELOOP_SERVED_MODEL_NAME": SERVED_NAME,
    }
    with start_gateway(str(tiny_model_dir), home, extra_env=env) as gateway:
        state = Replica(gateway, SERVED_NAME, keys, registry, set(gateway.engine_pids()))
        yield state
        state.engine_pids.update(gateway.engine_pids())
    left = [pid for pid in state.engine_pids if group_members(pid)]
    assert not left, f"engine process groups left after the gateway stopped: {left}"


def _add_full_finetune(registry: Registry, store: ArtifactStore, model_dir: Path, dest: Path) -> None:
    """A stored full fine-tune (serving "engine"): the tiny model itself stands in for it."""
    shutil.copytree(model_dir, dest)
    store_as_is(registry, store, "ft", dest, base_model=str(model_dir), method="full", serving="engine")


def _complete(client: OpenAI, model: str, max_tokens: int = 8) -> str:
    result = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0.0, extra_body=NO_EOS
    )
    assert result.model == model
    assert result.usage is not None and result.usage.completion_tokens == max_tokens
    return result.choices[0].text


def _stream(client: OpenAI, model: str, max_tokens: int = 8) -> tuple[str, str]:
    """(version that answered, streamed text) of one streaming completion."""
    raw = client.completions.with_raw_response.create(
        model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0.0, stream=True, extra_body=NO_EOS
    )
    chunks = list(raw.parse())
    assert all(chunk.model == model for chunk in chunks)
    return raw.headers["x-tuneloop-version"], "".join(c.choices[0].text for c in chunks if c.choices)


def test_base_alias_and_pinned_version_answer_chat_completion_and_streams(replica: Replica) -> None:
    client = replica.client("bot")
    texts: dict[str, tuple[str, str, str, str]] = {}
    for model in (replica.base, "bot", "bot@1", "bot@2"):
        completion = _complete(client, model)
        chunks = list(
            client.completions.create(
                model=model, prompt=PROMPT, max_tokens=8, temperature=0.0, stream=True,
                stream_options={"include_usage": True}, extra_body=NO_EOS,
            )
        )  # fmt: skip
        assert {c.model for c in chunks} == {model}
        last = chunks[-1]
        assert not last.choices and last.usage is not None and last.usage.completion_tokens == 8
        streamed = "".join(c.choices[0].text for c in chunks if c.choices)
        chat = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=8, temperature=0.0, extra_body=NO_EOS
        )
        assert chat.model == model and chat.usage is not None and chat.usage.completion_tokens == 8
        chat_chunks = list(
            client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=8, temperature=0.0, stream=True, extra_body=NO_EOS
            )
        )
        # No include_usage asked: the usage event the gateway asked the engine for is not passed on.
        assert all(c.usage is None and c.choices and c.model == model for c in chat_chunks)
        chat_streamed = "".join(c.choices[0].delta.content or "" for c in chat_chunks)
        texts[model] = (completion, streamed, chat.choices[0].message.content or "", chat_streamed)
    assert texts["bot"] == texts["bot@1"], "the alias must serve the version it points at"
    assert texts["bot@1"][0] != texts["bot@2"][0] != texts[replica.base][0]
    assert texts["bot@1"][2] != texts[replica.base][2]


def test_served_name_tools_and_max_completion_tokens(replica: Replica, tiny_model_dir: Path) -> None:
    client, greedy = replica.client("bot"), {"prompt": PROMPT, "temperature": 0.0}
    # The served name is listed; the folder `--model` named is not, yet still answers the same.
    assert SERVED_NAME in {m.id for m in client.models.list().data} - {str(tiny_model_dir)}
    texts = [
        client.completions.create(model=m, max_tokens=4, extra_body=NO_EOS, **greedy).choices[0].text
        for m in (SERVED_NAME, str(tiny_model_dir))
    ]
    assert texts[0] == texts[1]
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="TUNELOOP_TOOL_CALL_PARSER") as caught:
        client.chat.completions.create(model="bot", messages=MESSAGES, tools=[tool])  # type: ignore[list-item]
    assert caught.value.code == "tools_not_enabled"  # no parser configured: never answered as text
    done = client.completions.create(model="bot", extra_body={"max_completion_tokens": 3, **NO_EOS}, **greedy)
    assert done.usage is not None and done.usage.completion_tokens == 3
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        client.completions.create(
            model="bot", prompt=PROMPT, max_tokens=5, extra_body={"max_completion_tokens": 3}
        )


def test_gateway_and_engine_listen_on_loopback_only(replica: Replica) -> None:
    (engine,) = replica.gateway.engine_pids()
    gateway = listening_addresses(group_members(replica.gateway.process.pid))
    assert ("127.0.0.1", replica.gateway.port) in gateway and {ip for ip, _ in gateway} == {"127.0.0.1"}
    engine_side = listening_addresses(group_members(engine))
    assert ("127.0.0.1", replica.gateway.engine_port) in engine_side
    assert {ip for ip, _ in engine_side} == {"127.0.0.1"}


def test_models_lists_what_each_key_may_use(replica: Replica) -> None:
    cards = {m.id: m for m in replica.client("bot").models.list().data}
    assert set(cards) == {replica.base, "bot", "bot@1", "bot@2", "bot@3"}
    assert cards[replica.base].parent is None  # type: ignore[attr-defined]
    assert all(cards[i].parent == replica.base for i in cards if i != replica.base)  # type: ignore[attr-defined]
    assert cards["bot"].root == "bot@1"  # type: ignore[attr-defined]
    other = {m.id for m in replica.client("other").models.list().data}
    assert other == {replica.base, "other", "other@1"}
    admin = {m.id for m in replica.client("admin").models.list().data}
    # Refused versions (IA3, a full fine-tune, prompt tuning without its hook) are not offered.
    expected = {replica.base, "bot", "bot@1", "bot@2", "bot@3", "other", "other@1"}
    if prompt_embeds_hook() is not None:
        expected |= {"soft-bot", "soft@1"}
    assert admin == expected
    assert replica.client("bot").models.retrieve("bot@2").id == "bot@2"


def test_a_key_never_learns_of_adapters_outside_its_scope(replica: Replica) -> None:
    def not_found(name: str) -> str:
        response = replica.post("/v1/chat/completions", {"model": name, "messages": MESSAGES}, key="bot")
        assert response.status_code == 404, response.text
        return response.text.replace(name, "NAME")

    bodies = {not_found(name) for name in ("other", "other@1", "ft@1", "no-such-model", "bot@99")}
    assert len(bodies) == 1, bodies
    with pytest.raises(openai.NotFoundError) as missing:
        replica.client("bot").models.retrieve("other")
    assert missing.value.body == json.loads(next(iter(bodies)).replace("NAME", "other"))["error"]


def test_missing_or_bad_keys_are_401_a_new_key_works_at_once_and_a_revoked_one_stops(
    replica: Replica,
) -> None:
    body = {"model": replica.base, "prompt": PROMPT, "max_tokens": 1}
    assert replica.post("/v1/completions", body, key=None).status_code == 401
    bad = httpx.post(
        f"{replica.gateway.url}/v1/completions", json=body, headers={"Authorization": "Bearer tl-nope"}
    )
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert (
        httpx.get(f"{replica.gateway.url}/v1/models", headers={"Authorization": "Basic x"}).status_code == 401
    )
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=replica.gateway.base_url, api_key="tl-wrong", max_retries=0).models.list()
    fresh = create_key(replica.registry, scopes=["other"], admin=False)
    client = OpenAI(base_url=replica.gateway.base_url, api_key=fresh.secret, max_retries=0)
    assert _complete(client, "other", max_tokens=2)
    # Revoked: refused from the gateway's next registry poll (0.5 s), by the openai client too.
    replica.registry.revoke_api_key(fresh.prefix)
    deadline = time.monotonic() + 2.0
    auth = {"Authorization": f"Bearer {fresh.secret}"}
    while httpx.get(f"{replica.gateway.url}/v1/models", headers=auth, timeout=10).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still worked 2 s later"
        time.sleep(0.1)
    with pytest.raises(openai.AuthenticationError):
        _complete(client, "other", max_tokens=2)


def test_versions_this_replica_cannot_serve_are_refused_with_the_reason(replica: Replica) -> None:
    def error(model: str) -> tuple[int, str]:
        response = replica.post("/v1/completions", {"model": model, "prompt": PROMPT}, key="admin")
        return response.status_code, response.json()["error"]["message"]

    for name in ("ia3-bot", "ia3ad@1"):
        status, message = error(name)
        assert status == 400 and "ia3" in message, message
    status, message = error("ft@1")
    assert status == 400 and "tuneloop serve --model ft@1" in message
    if prompt_embeds_hook() is None:
        for name in ("soft-bot", "soft@1"):
            status, message = error(name)
            assert status == 501 and "prompt_tuning" in message, message


def test_errors_are_openai_shaped_with_the_right_status(replica: Replica) -> None:
    cases = [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (
            json.dumps({"model": replica.base, "prompt": PROMPT, "max_tokens": "5"}).encode(),
            400,
            "invalid_value",
        ),
        (
            json.dumps({"model": replica.base, "prompt": "word " * 2000}).encode(),
            400,
            "context_length_exceeded",
        ),
        (json.dumps({"model": "nope", "prompt": PROMPT}).encode(), 404, "model_not_found"),
    ]
    for body, status, code in cases:
        response = replica.post("/v1/completions", body)
        assert response.status_code == status, (body[:60], response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    too_long = replica.post("/v1/completions", {"model": replica.base, "prompt": "word " * 2000}).json()
    assert "maximum context length is 512" in too_long["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        replica.client().completions.create(model="bot", prompt=PROMPT, max_tokens=-1)
    unknown = httpx.get(f"{replica.gateway.url}/v2/nothing")
    assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "Unknown path /v2/nothing"
    assert httpx.get(f"{replica.gateway.url}/v1/completions").status_code == 405


def test_fuzzed_bad_requests_get_4xx_never_5xx(replica: Replica) -> None:
    rng = random.Random(0)
    seen = 0
    with httpx.Client(base_url=replica.gateway.url, timeout=60, headers=replica.auth("bot")) as http:
        for body in bad_bodies(replica.base, rng):
            path = rng.choice(["/v1/chat/completions", "/v1/completions"])
            response = http.post(path, content=body, headers={"Content-Type": "application/json"})
            assert 400 <= response.status_code < 500, (path, body[:200], response.text)
            assert "Traceback" not in response.text
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            seen += 1
    assert seen > 270


def test_metrics_count_requests_tokens_and_need_an_admin_key(replica: Replica) -> None:
    labels = (("alias", ""), ("version", "other@1"))
    before = replica.metrics()
    client = replica.client("admin")
    for _ in range(5):
        _complete(client, "other@1", max_tokens=3)
    for _ in range(2):
        assert _stream(client, "other@1", max_tokens=3)[0] == "other@1"
    after = replica.metrics()

    def delta(name: str, extra: tuple[tuple[str, str], ...] = ()) -> float:
        wanted = (name, tuple(sorted(labels + extra)))
        return after.get(wanted, 0.0) - before.get(wanted, 0.0)

    assert delta("tuneloop_requests_total", (("endpoint", "completions"), ("status", "200"))) == 7
    assert delta("tuneloop_request_duration_seconds_count", (("endpoint", "completions"),)) == 7
    assert delta("tuneloop_prompt_tokens_total") > 0
    assert delta("tuneloop_generation_tokens_total") == 7 * 3
    assert delta("tuneloop_time_to_first_token_seconds_count") == 2
    assert delta("tuneloop_requests_in_flight") == 0
    assert after[("tuneloop_engine_up", ())] == 1
    denied = httpx.get(f"{replica.gateway.url}/metrics", headers=replica.auth("bot"))
    assert denied.status_code == 403
    assert httpx.get(f"{replica.gateway.url}/metrics").status_code == 401
    engine = httpx.get(f"{replica.gateway.url}/metrics/engine", headers=replica.auth("admin"))
    assert engine.status_code == 200 and "vllm:" in engine.text


def test_in_flight_limit_answers_429_and_frees_slots_when_clients_leave(replica: Replica) -> None:
    # 12 x 4 sequences of 480 tokens: more than the engine runs at once (16), so these streams stay
    # open for seconds (most wait in the engine's queue) and every one holds a gateway slot.
    body = {"model": replica.base, "prompt": PROMPT, "max_tokens": 480, "n": 4, "stream": True, **NO_EOS}
    with httpx.Client(base_url=replica.gateway.url, timeout=60, headers=replica.auth("bot")) as http:
        with ExitStack() as streams:
            for _ in range(MAX_IN_FLIGHT):
                response = streams.enter_context(http.stream("POST", "/v1/completions", json=body))
                assert response.status_code == 200
            refused = http.post("/v1/completions", json={**body, "stream": False, "max_tokens": 1, "n": 1})
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "too_many_requests"
        # The clients hung up mid-stream: their slots come back without the answers being read.
        deadline = time.monotonic() + 10
        while (
            status := http.post(
                "/v1/completions", json={**body, "stream": False, "max_tokens": 1}
            ).status_code
        ) == 429:
            assert time.monotonic() < deadline, "slots of disconnected streams were never released"
            time.sleep(0.1)
        assert status == 200


def test_least_recently_used_idle_adapter_is_unloaded_past_the_limit(replica: Replica) -> None:
    client = replica.client("admin")
    for model in ("bot@1", "other@1", "bot@2", "bot@3"):  # 4 versions, room for 3
        _complete(client, model, max_tokens=1)
    deadline = time.monotonic() + 10
    # bot@2 is the idle one no alias serves: unloaded first; alias targets stay.
    while (resident := replica.engine_adapters()) != {"bot@1", "other@1", "bot@3"}:
        assert time.monotonic() < deadline, resident
        time.sleep(0.1)


def _switched_after(replica: Replica, count: float, started: float, timeout: float = 10.0) -> float:
    """Seconds from `started` until the gateway has switched alias `bot` `count` times in all.

    Read from /metrics, which never waits on the engine, so this is the pick-up latency itself
    (registry poll + load + switch), not the latency of a request queued behind busy streams.
    """
    key = ("tuneloop_alias_switches_total", (("alias", "bot"),))
    while replica.metrics().get(key, 0.0) < count:
        assert time.monotonic() - started < timeout, "alias bot was never switched"
        time.sleep(0.01)
    return time.monotonic() - started


def test_promotion_and_rollback_under_concurrent_streams(replica: Replica) -> None:
    tokens = 16
    client = replica.client("bot")
    known = {v: _stream(client, v, max_tokens=tokens)[1] for v in ("bot@1", "bot@2")}
    assert known["bot@1"] != known["bot@2"]
    results: list[tuple[str, str]] = []
    errors: list[str] = []
    stop = threading.Event()

    def stream_forever() -> None:
        own = replica.client("bot")
        while not stop.is_set():
            try:
                results.append(_stream(own, "bot", max_tokens=tokens))
            except Exception as exc:
                errors.append(repr(exc))

    switches = replica.metrics().get(("tuneloop_alias_switches_total", (("alias", "bot"),)), 0.0)
    threads = [threading.Thread(target=stream_forever) for _ in range(STREAMS)]
    for thread in threads:
        thread.start()
    try:
        _wait_until(lambda: len(results) >= STREAMS // 2)  # every thread is streaming by now
        started = time.monotonic()
        replica.registry.promote("bot", "bot@2")
        promoted_after = _switched_after(replica, switches + 1, started)
        _wait_until(lambda: sum(v == "bot@2" for v, _ in results) >= STREAMS // 2)
        started = time.monotonic()
        replica.registry.rollback("bot")
        rolled_back_after = _switched_after(replica, switches + 2, started)
        seen = len(results)
        _wait_until(lambda: sum(v == "bot@1" for v, _ in results[seen:]) >= STREAMS // 2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    wrong = [(v, t) for v, t in results if t != known[v]]
    assert not wrong, f"{len(wrong)} of {len(results)} streams did not match their version: {wrong[:3]}"
    assert {v for v, _ in results} == {"bot@1", "bot@2"}
    assert promoted_after < 2.0 and rolled_back_after < 2.0
    # bot@2 was retired by the rollback: unloaded once its last stream finished.
    _wait_until(lambda: "bot@2" not in replica.engine_adapters())
    print(
        f"\n{len(results)} streams, {STREAMS} concurrent; alias switched {promoted_after:.3f} s after the "
        f"promotion, {rolled_back_after:.3f} s after the rollback"
    )


def _wait_until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_with_capture_off_nothing_is_written_and_no_feedback_is_taken(replica: Replica) -> None:
    raw = replica.client("bot").completions.with_raw_response.create(model="bot", prompt=PROMPT, max_tokens=2)
    request_id = raw.parse().id
    assert request_id == raw.headers["x-request-id"] and request_id.startswith("cmpl-")
    response = replica.post("/v1/feedback", {"request_id": request_id, "rating": 5})
    assert response.status_code == 404 and "capture is off" in response.json()["error"]["message"]
    # Every test above made requests: none reached a capture database.
    assert not (replica.gateway.home / "capture.db").exists()


def test_killed_engine_gives_quick_503s_then_recovers_with_its_adapters(replica: Replica) -> None:
    import os
    import signal

    client = replica.client("bot")
    before = _complete(client, "bot")
    (engine,) = replica.gateway.engine_pids()
    replica.engine_pids.add(engine)
    os.killpg(engine, signal.SIGKILL)
    statuses = []
    for _ in range(5):
        started = time.monotonic()
        response = replica.post("/v1/completions", {"model": "bot", "prompt": PROMPT, "max_tokens": 4})
        assert time.monotonic() - started < 2.0, "a down engine must be answered quickly"
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert (
                response.headers["Retry-After"] and response.json()["error"]["code"] == "engine_unavailable"
            )
        time.sleep(0.2)
    assert statuses[-1] == 503 and set(statuses) == {503}, statuses
    assert httpx.get(f"{replica.gateway.url}/ready").status_code == 503
    deadline = time.monotonic() + 300
    while httpx.get(f"{replica.gateway.url}/ready").status_code != 200:
        assert time.monotonic() < deadline, replica.gateway.process.log_tail(30)
        time.sleep(0.5)
    replica.engine_pids.update(replica.gateway.engine_pids())
    assert "bot@1" in replica.engine_adapters(), "the alias's adapter was not reloaded after the restart"
    assert _complete(client, "bot") == before
    assert replica.metrics()[("tuneloop_engine_restarts_total", ())] == 1


def test_a_full_finetune_is_served_by_a_replica_of_its_own(replica: Replica) -> None:
    """`tuneloop serve --model ft@1`: the stored fine-tune is fetched (checksummed) into the replica's
    cache and its engine serves it as the base model, under the version's name."""
    with start_gateway("ft@1", replica.gateway.home, extra_env={"TUNELOOP_CAPTURE_ENABLED": "0"}) as own:
        client = OpenAI(base_url=own.base_url, api_key=replica.keys["admin"], max_retries=0)
        assert "ft@1" in {model.id for model in client.models.list()}
        raw = client.completions.with_raw_response.create(
            model="ft@1", prompt=PROMPT, max_tokens=4, temperature=0.0, extra_body=NO_EOS
        )
        assert raw.headers["x-tuneloop-version"] == "ft@1"
        assert raw.parse().usage.completion_tokens == 4  # type: ignore[union-attr]
        engine_models = httpx.get(
            f"{own.engine_url}/v1/models", headers=own.engine_headers(), timeout=10
        ).json()["data"]
        assert any(Path(m["id"]).parts[-2:] == ("ft", "v1") for m in engine_models), engine_models
