"""Prompt-tuned and P-tuned versions through the real gateway, and capture + feedback of its traffic.

One replica (one engine start) serves the steerable tiny Llama of helpers/soft_prompts.py with:
`pt` (prompt tuning) and `ptune` (P-tuning), both really trained with peft to answer TARGET, and
`lora` (a random LoRA), all published with the artifact store and registry as `adapters import`
does. The official openai client must get exactly what peft's own `generate` gives, for
completions and chats, streamed or not, while the LoRA alias is served by the same engine.

The same replica captures every request (sample rate 1) into a SQLite file the tests read, with
the default redaction hook. The tests run in file order; the last one breaks the capture database
under the running gateway.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from helpers.gateway import Replica, start_gateway
from helpers.soft_prompts import (
    MAX_TOKENS,
    MESSAGES,
    PROMPT,
    TARGET,
    build_steerable_llama,
    hf_greedy,
    train_river_prompts,
)
from helpers.tiny_model import build_random_lora
from openai import OpenAI

from tuneloop.monitoring.capture import CapturedRequest, CaptureStore
from tuneloop.platform.adapters import import_adapter
from tuneloop.platform.apikeys import create_key
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.procs import group_members
from tuneloop.platform.registry import Registry

pytestmark = pytest.mark.slow

IDS = {"return_token_ids": True}  # vLLM's extra: the generated token ids, compared with peft's


@dataclass
class Expected:
    """peft's greedy answers (token ids, EOS included) of one trained soft prompt."""

    completion: list[int]
    chat: list[int]


@dataclass
class Setup:
    replica: Replica
    expected: dict[str, Expected]
    """By model name as clients send it: the alias and pinned names of both soft prompts."""
    capture: CaptureStore
    decode: Callable[[Sequence[int]], str]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from transformers import AutoTokenizer

    work = tmp_path_factory.mktemp("soft-prompt-adapters")
    model_dir = build_steerable_llama(work / "steerable-llama")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    task = train_river_prompts(model_dir, tokenizer, work)
    prompt_ids, chat_ids, trained = task.prompt_ids, task.chat_ids, task.trained
    by_kind = {
        kind: Expected(hf_greedy(m, prompt_ids), hf_greedy(m, chat_ids)) for kind, m in task.trained.items()
    }
    base = trained["prompt_tuning"].get_base_model()
    for kind, expected in by_kind.items():
        assert tokenizer.decode(expected.completion, skip_special_tokens=True) == TARGET, kind
        assert tokenizer.decode(expected.chat, skip_special_tokens=True) == TARGET, kind
    assert hf_greedy(base, prompt_ids) != by_kind["prompt_tuning"].completion

    home = tmp_path_factory.mktemp("soft-prompt-home")
    registry = Registry(f"sqlite:///{home / 'registry.db'}")
    store = ArtifactStore(str(home / "artifacts"))
    for name, folder in (
        ("pt", work / "prompt_tuning"),
        ("ptune", work / "p_tuning"),
        ("lora", build_random_lora(model_dir, work / "lora", rank=8, seed=1)),
    ):
        import_adapter(name, folder, registry=registry, store=store, max_lora_rank=16)
    for alias, ref in (("pt-bot", "pt@1"), ("ptune-bot", "ptune@1"), ("lora-bot", "lora@1")):
        registry.promote(alias, ref)
    keys = {
        "bot": create_key(registry, scopes=["pt-bot", "ptune", "lora-bot"], admin=False).secret,
        "lora-only": create_key(registry, scopes=["lora-bot"], admin=False).secret,
        "admin": create_key(registry, scopes=[], admin=True).secret,
    }
    capture_url = f"sqlite:///{home / 'capture.db'}"
    env = {
        "TUNELOOP_CAPTURE_ENABLED": "1",
        "TUNELOOP_CAPTURE_SAMPLE_RATE": "1",
        "TUNELOOP_CAPTURE_DB_URL": capture_url,
        "TUNELOOP_CAPTURE_REDACT": "",  # the default: tuneloop.monitoring.capture.redact:mask_pii
    }
    expected = {
        "pt-bot": by_kind["prompt_tuning"],
        "pt@1": by_kind["prompt_tuning"],
        "ptune-bot": by_kind["p_tuning"],
        "ptune@1": by_kind["p_tuning"],
    }
    with start_gateway(str(model_dir), home, extra_env=env) as gateway:
        replica = Replica(gateway, str(model_dir), keys, registry, set(gateway.engine_pids()))
        capture = CaptureStore(capture_url)
        yield Setup(replica, expected, capture, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        capture.close()
        replica.engine_pids.update(gateway.engine_pids())
    left = [pid for pid in replica.engine_pids if group_members(pid)]
    assert not left, f"engine process groups left after the gateway stopped: {left}"


def _check_ids(raw: Any, model: str) -> str:
    """The request id of a raw openai response, checked: `id` == X-Request-Id, `model` as asked."""
    parsed = raw.parse()
    assert parsed.model == model and parsed.id == raw.headers["x-request-id"]
    assert parsed.id.startswith("chatcmpl-" if parsed.object == "chat.completion" else "cmpl-")
    return str(parsed.id)


def _completion(client: OpenAI, model: str, prompt: str = PROMPT) -> tuple[str, list[int], str]:
    """(text, token ids, request id) of a greedy completion."""
    raw = client.completions.with_raw_response.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0, extra_body=IDS
    )
    request_id = _check_ids(raw, model)
    choice = raw.parse().choices[0]
    return choice.text, list(choice.token_ids), request_id  # type: ignore[attr-defined]


def _chat(client: OpenAI, model: str) -> tuple[str, list[int], str]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.0, extra_body=IDS
    )
    request_id = _check_ids(raw, model)
    answer = raw.parse()
    assert answer.object == "chat.completion" and answer.choices[0].message.role == "assistant"
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    choice = answer.choices[0]
    return choice.message.content or "", list(choice.token_ids), request_id  # type: ignore[attr-defined]


def _stream(client: OpenAI, model: str, *, chat: bool) -> tuple[str, str]:
    """(streamed text, request id) of a greedy streaming completion or chat."""
    common: dict[str, Any] = {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0.0, "stream": True}
    options = {"stream_options": {"include_usage": True}}
    if chat:
        raw: Any = client.chat.completions.with_raw_response.create(messages=MESSAGES, **common, **options)
    else:
        raw = client.completions.with_raw_response.create(prompt=PROMPT, **common, **options)
    chunks = list(raw.parse())
    request_id = raw.headers["x-request-id"]
    assert {c.id for c in chunks} == {request_id} and {c.model for c in chunks} == {model}
    assert chunks[-1].usage is not None and not chunks[-1].choices
    if chat:
        assert {c.object for c in chunks} == {"chat.completion.chunk"}
        assert chunks[0].choices[0].delta.role == "assistant"
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), request_id
    return "".join(c.choices[0].text for c in chunks if c.choices), request_id


def test_soft_prompt_versions_answer_exactly_as_peft_generate(setup: Setup) -> None:
    client = setup.replica.client("bot")
    base_text = _completion(client, setup.replica.base)[0]
    assert base_text != TARGET, "without its virtual tokens the base model must answer otherwise"
    for model, expected in setup.expected.items():
        text, ids, _ = _completion(client, model)
        assert ids == expected.completion and text == TARGET, (model, text)
        text, ids, _ = _chat(client, model)
        assert ids == expected.chat and text == TARGET, (model, text)
        assert _stream(client, model, chat=False)[0] == TARGET, model
        assert _stream(client, model, chat=True)[0] == TARGET, model
    raw = client.completions.with_raw_response.create(model="pt-bot", prompt=PROMPT, max_tokens=2)
    assert raw.headers["x-tuneloop-version"] == "pt@1"


def test_a_lora_alias_is_served_by_the_same_engine_at_the_same_time(setup: Setup) -> None:
    client = setup.replica.client("bot")
    requests: list[Callable[[], Any]] = [
        lambda: _completion(client, "lora-bot")[:2],
        lambda: _chat(client, "pt-bot")[:2],
        lambda: _stream(client, "ptune-bot", chat=False)[0],
        lambda: _completion(client, "ptune@1")[:2],
        lambda: _stream(client, "lora-bot", chat=True)[0],
    ] * 2
    alone = [request() for request in requests]
    assert alone[0][0] != TARGET and alone[0][0] != _completion(client, setup.replica.base)[0]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        together = [f.result() for f in [pool.submit(request) for request in requests]]
    assert together == alone


def test_clients_can_never_send_prompt_embeddings(setup: Setup) -> None:
    replica = setup.replica
    fake = "QUJD"  # never decoded: refused before anything reaches the engine
    for model in (replica.base, "lora-bot", "pt-bot", "ptune@1"):
        response = replica.post("/v1/completions", {"model": model, "prompt": PROMPT, "prompt_embeds": fake})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "prompt_embeds"
        part = {"type": "prompt_embeds", "data": fake}
        chat = {"model": model, "messages": [{"role": "user", "content": [part]}]}
        response = replica.post("/v1/chat/completions", chat)
        assert response.status_code == 400 and "prompt_embeds" in response.json()["error"]["message"]
    client = replica.client("bot")
    with pytest.raises(openai.BadRequestError, match=r"(?i)tool"):
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        client.chat.completions.create(model="pt-bot", messages=MESSAGES, tools=[tool])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model="pt-bot", prompt=PROMPT, echo=True, max_tokens=2)
    image = {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}
    with pytest.raises(openai.BadRequestError, match="text only"):
        client.chat.completions.create(model="pt-bot", messages=[{"role": "user", "content": [image]}])  # type: ignore[list-item]


def _captured(store: CaptureStore, request_id: str, timeout: float = 15.0) -> CapturedRequest:
    deadline = time.monotonic() + timeout
    while (found := store.get(request_id)) is None:
        assert time.monotonic() < deadline, f"{request_id} was never captured"
        time.sleep(0.05)
    return found


def test_every_request_is_captured_with_its_version_and_answer(setup: Setup) -> None:
    client = setup.replica.client("bot")
    made: list[tuple[str, str, str, str, str]] = []  # (request id, model, version, prompt, answer)
    for model, version in (("lora-bot", "lora@1"), ("pt-bot", "pt@1"), ("ptune@1", "ptune@1")):
        text, _, request_id = _completion(client, model)
        made.append((request_id, model, version, PROMPT, text))
        text, _, request_id = _chat(client, model)
        made.append((request_id, model, version, json.dumps(MESSAGES), text))
        text, request_id = _stream(client, model, chat=True)
        made.append((request_id, model, version, json.dumps(MESSAGES), text))
    text, _, request_id = _completion(client, setup.replica.base)
    made.append((request_id, setup.replica.base, "base", PROMPT, text))
    for request_id, model, version, prompt, answer in made:
        row = _captured(setup.capture, request_id)
        assert (row.alias, row.version, row.prompt, row.answer) == (model, version, prompt, answer)
        assert row.status == "ok" and row.latency_s > 0 and row.completion_tokens and row.prompt_tokens
        if version.startswith("pt"):  # the 8 virtual tokens count as prompt positions
            assert row.prompt_tokens > 8
    streamed = [answer for request_id, *_, answer in made[2::3]]
    assert streamed[1:] == [TARGET, TARGET], "a stream's answer is its deltas joined"
    # An engine refusal is captured as an error; a client gone mid-stream as cancelled.
    too_long = setup.replica.post("/v1/completions", {"model": "lora-bot", "prompt": "word " * 600})
    assert too_long.status_code == 400
    assert _captured(setup.capture, too_long.headers["x-request-id"]).status == "error"
    body = {"model": "lora-bot", "prompt": PROMPT, "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{setup.replica.gateway.base_url}/completions", json=body, headers=setup.replica.auth("bot")
    ) as response:
        request_id = response.headers["x-request-id"]
        next(response.iter_lines())
    assert _captured(setup.capture, request_id).status == "cancelled"


def test_captured_prompts_are_redacted_by_the_configured_hook(setup: Setup) -> None:
    prompt = "Mail jane.doe@example.com or call 555 0100 2000 about"
    _, _, request_id = _completion(setup.replica.client("bot"), "lora-bot", prompt=prompt)
    assert _captured(setup.capture, request_id).prompt == "Mail <email> or call <number> about"


def test_feedback_is_accepted_joined_and_scoped(setup: Setup) -> None:
    replica = setup.replica
    _, _, request_id = _chat(replica.client("bot"), "pt-bot")
    body = {"request_id": request_id, "label": "wrong", "rating": 2, "corrected_answer": "the sea"}
    response = replica.post("/v1/feedback", body)
    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["object"] == "feedback" and stored["id"].startswith("fb-")
    assert (stored["request_id"], stored["model"], stored["rating"]) == (request_id, "pt-bot", 2)
    pairs = setup.capture.with_feedback("pt-bot")
    joined = [(r.request_id, f.label, f.corrected_answer) for r, f in pairs]
    assert (request_id, "wrong", "the sea") in joined
    # Feedback right after the answer: the gateway waits for the writer rather than answering 404.
    _, _, fresh = _completion(replica.client("bot"), "lora-bot")
    assert replica.post("/v1/feedback", {"request_id": fresh, "rating": 5}).status_code == 201

    def error(payload: Any, key: str | None = "bot") -> tuple[int, dict[str, Any]]:
        answer = replica.post("/v1/feedback", payload, key=key)
        assert "Traceback" not in answer.text
        return answer.status_code, answer.json()["error"]

    # A key outside the request's scope cannot tell it from one that does not exist.
    outside = error({"request_id": request_id, "rating": 1}, key="lora-only")
    unknown = error({"request_id": "chatcmpl-" + "0" * 32, "rating": 1})
    assert outside[0] == unknown[0] == 404 and outside[1]["code"] == unknown[1]["code"] == "request_not_found"
    # Nor can a key scoped to the adapter that answered judge another key's request; an admin may.
    scoped = error({"request_id": fresh, "rating": 4}, key="lora-only")
    assert scoped[0] == 404 and scoped[1]["code"] == "request_not_found"
    assert replica.post("/v1/feedback", {"request_id": fresh, "rating": 4}, key="admin").status_code == 201
    assert error({"request_id": request_id, "rating": 1}, key=None)[0] == 401
    for bad, param in [
        ({"request_id": request_id}, None),  # says nothing
        ({"request_id": request_id, "rating": "5"}, "rating"),
        ({"request_id": request_id, "rating": 9}, "rating"),
        ({"request_id": request_id, "label": "ok", "mood": "happy"}, "mood"),
        ({"rating": 3}, "request_id"),
        (b"{not json", None),
    ]:
        status, detail = error(bad)
        assert status == 400 and detail["param"] == param, (bad, detail)
        assert set(detail) == {"message", "type", "param", "code"}


def test_a_broken_capture_database_never_fails_a_request(setup: Setup) -> None:
    database = setup.capture.engine.url.database
    assert database
    with sqlite3.connect(database) as conn:  # the table vanishes under the running writer
        conn.execute("ALTER TABLE capture_requests RENAME TO capture_requests_gone")
    client = setup.replica.client("bot")
    started = time.monotonic()
    for _ in range(3):
        assert _completion(client, "pt-bot")[0] == TARGET
        _stream(client, "lora-bot", chat=True)
    assert time.monotonic() - started < 60
    _, _, request_id = _completion(client, "lora-bot")
    response = setup.replica.post("/v1/feedback", {"request_id": request_id, "rating": 3})
    assert response.status_code == 503 and response.json()["error"]["code"] == "capture_unavailable"
    assert httpx.get(f"{setup.replica.gateway.url}/ready").status_code == 200
