"""The proxied stream's event rewriting without an engine: recorded vLLM events, split at awkward
places, must come out with the client's model name and the gateway's id, usage dropped unless asked
for, errors reshaped, and the call's token counts, first token and answer noted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
from helpers import sse

from tuneloop.serve.request.call import Call
from tuneloop.serve.request.proxy import RAW_SEND, ProxiedStream
from tuneloop.serve.routing.resolver import Target

ENGINE_MODEL = "/models/tiny llama"


def vllm_event(text: str, *, usage: dict[str, int] | None = None) -> bytes:
    return sse.vllm_event(text, model=ENGINE_MODEL, usage=usage)


class FakeContent:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        while self._chunks:
            yield self._chunks.pop(0)

    async def read(self) -> bytes:
        rest, self._chunks = b"".join(self._chunks), []
        return rest


class FakeUpstream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = FakeContent(chunks)


def run(
    chunks: list[bytes], *, include_usage: bool, capturing: bool = True, as_chat: bool = False
) -> tuple[list[dict[str, Any]], Call]:
    target = Target(
        requested="support-bot", engine_model=ENGINE_MODEL, kind="lora", alias="support-bot", version="s@2"
    )
    call = Call(endpoint="completions", request_id="cmpl-gateway-1", capturing=capturing)
    upstream = cast(aiohttp.ClientResponse, FakeUpstream(chunks))
    stream = ProxiedStream(upstream, target, call, include_usage=include_usage, as_chat=as_chat)

    async def collect() -> bytes:
        return b"".join([part async for part in stream._events()])

    raw = asyncio.run(collect())
    assert raw.endswith(b"data: [DONE]\n\n")
    # From the first event on, the engine's id and model are known: events are rewritten as bytes.
    assert as_chat or stream._swaps is not None  # a reshaped chat is re-encoded anyway
    events = [json.loads(block[6:]) for block in raw.split(b"\n\n") if block.startswith(b"data: {")]
    return events, call


def test_events_get_the_clients_model_and_the_gateways_id_whatever_the_chunking() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    one_each = [vllm_event(""), vllm_event(' say "hi"'), vllm_event(" there"), vllm_event("", usage=usage),
                b"data: [DONE]\n\n"]  # fmt: skip
    whole = b"".join(one_each)
    # All at once, an event per chunk (as an engine in this process sends them), and split anywhere.
    for chunks in [[whole], one_each, *([whole[i : i + n] for i in range(0, len(whole), n)] for n in (7, 1))]:
        events, call = run(chunks, include_usage=False)
        assert {e["model"] for e in events} == {"support-bot"} and {e["id"] for e in events} == {
            "cmpl-gateway-1"
        }
        assert [e["choices"][0]["text"] for e in events] == ["", ' say "hi"', " there"]  # usage event dropped
        assert call.usage == {"prompt_tokens": 3, "completion_tokens": 2} and call.first_token_at is not None
        assert call.answer_text() == ' say "hi" there'


def test_usage_is_passed_on_when_asked_and_chats_are_reshaped() -> None:
    chunks = [
        vllm_event("a"),
        vllm_event("", usage={"prompt_tokens": 1, "completion_tokens": 1}),
        b"data: [DONE]\n\n",
    ]
    events, call = run(chunks, include_usage=True, capturing=False, as_chat=True)
    assert [e["object"] for e in events] == ["chat.completion.chunk"] * 2
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert events[1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 1} and call.answer == []


def test_an_engine_error_mid_stream_is_reshaped_and_recorded() -> None:
    error = {"error": {"message": f"model {ENGINE_MODEL} failed", "type": "InternalServerError", "code": 500}}
    chunks = [vllm_event("a"), b"data: " + json.dumps(error).encode() + b"\n\n", b"data: [DONE]\n\n"]
    events, call = run(chunks, include_usage=False)
    assert events[1]["error"]["type"] == "server_error" and ENGINE_MODEL not in events[1]["error"]["message"]
    assert "support-bot" in events[1]["error"]["message"] and call.status == 500


class OpenEndedContent(FakeContent):
    """An engine that has sent [DONE] but not yet closed its side of the connection."""

    async def iter_any(self) -> AsyncIterator[bytes]:
        async for chunk in super().iter_any():
            yield chunk
        await asyncio.Event().wait()

    async def read(self) -> bytes:
        await asyncio.Event().wait()
        return b""


class ClosableUpstream:
    def __init__(self, chunks: list[bytes], *, open_ended: bool = True) -> None:
        self.content = OpenEndedContent(chunks) if open_ended else FakeContent(chunks)
        self.closed = self.released = False

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


def hang_up_after(marker: bytes, chunks: list[bytes]) -> Call:
    """Serve the stream to a client that disconnects once it has received `marker`."""
    target = Target(requested="bot", engine_model=ENGINE_MODEL, kind="lora", alias="bot", version="s@1")
    call = Call(endpoint="completions", request_id="cmpl-gateway-2", capturing=False)
    upstream = ClosableUpstream(chunks)
    stream = ProxiedStream(
        cast(aiohttp.ClientResponse, upstream), target, call, include_usage=False, as_chat=False
    )

    async def serve() -> None:
        got_marker = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await got_marker.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if marker in message.get("body", b""):
                got_marker.set()

        scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST", "path": "/v1/completions"}
        await asyncio.wait_for(stream(scope, receive, send), timeout=10)

    asyncio.run(serve())
    assert upstream.closed  # the engine's side is closed either way
    return call


def test_a_client_that_hangs_up_after_done_was_answered_in_full() -> None:
    # The openai client disconnects right after [DONE], often before the engine closes its side.
    call = hang_up_after(b"[DONE]", [vllm_event("a"), b"data: [DONE]\n\n"])
    assert call.status == 200


def test_a_client_that_hangs_up_mid_stream_is_recorded_as_gone() -> None:
    call = hang_up_after(b'"a"', [vllm_event("a"), vllm_event("b")])
    assert call.status == 499


def test_done_ends_the_response_in_one_write_and_the_engine_connection_is_kept() -> None:
    target = Target(requested="bot", engine_model=ENGINE_MODEL, kind="lora", alias="bot", version="s@1")
    call = Call(endpoint="completions", request_id="cmpl-gateway-3", capturing=False)
    # [DONE] arrives alone; the engine's end of the response (the chunk terminator) comes after it.
    upstream = ClosableUpstream([vllm_event("a"), b"data: [DONE]\n\n", b""], open_ended=False)
    stream = ProxiedStream(
        cast(aiohttp.ClientResponse, upstream), target, call, include_usage=False, as_chat=False
    )
    middleware: list[dict[str, Any]] = []
    server: list[dict[str, Any]] = []

    async def serve() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def through_middleware(message: dict[str, Any]) -> None:
            middleware.append(message)

        async def raw(message: dict[str, Any]) -> None:
            server.append(message)

        scope = {"type": "http", RAW_SEND: raw, "method": "POST", "path": "/v1/completions"}
        await asyncio.wait_for(stream(scope, receive, through_middleware), timeout=10)

    asyncio.run(serve())
    assert [m["type"] for m in middleware] == ["http.response.start"]
    assert [m["more_body"] for m in server] == [True, False]
    assert server[-1]["body"] == b"data: [DONE]\n\n"
    assert upstream.released and not upstream.closed and call.status == 200


def test_events_pass_through_byte_for_byte_but_for_model_and_id() -> None:
    """Only `"id":…` and `"model":…` change; escapes, non-ASCII text, field order and every other
    field (logprobs, token ids, fields this gateway does not know) reach the client as vLLM wrote
    them, the first event included."""
    events = []
    for text in ("", "héllo “quoted” ✓", ' a "model":"x" \\n', "\u2028日本"):
        event = {
            "id": "cmpl-engine-7", "object": "text_completion", "created": 1, "model": ENGINE_MODEL,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None,
                         "stop_reason": None, "token_ids": [1, 2], "future_field": {"a": [1.5e-7]}}],
            "service_tier": None, "system_fingerprint": None,
        }  # fmt: skip
        events.append(
            b"data: " + json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
        )
    usage = vllm_event("", usage={"prompt_tokens": 3, "completion_tokens": 4})
    whole = b"".join([*events, usage, b"data: [DONE]\n\n"])
    for capturing in (True, False):
        for size in (len(whole), 5):
            call = Call(endpoint="completions", request_id="cmpl-gateway-1", capturing=capturing)
            target = Target(
                requested="bot", engine_model=ENGINE_MODEL, kind="lora", alias="bot", version="s@2"
            )
            upstream = cast(
                aiohttp.ClientResponse,
                FakeUpstream([whole[i : i + size] for i in range(0, len(whole), size)]),
            )
            stream = ProxiedStream(upstream, target, call, include_usage=True, as_chat=False)

            async def collect(s: ProxiedStream = stream) -> bytes:
                return b"".join([part async for part in s._events()])

            expected = whole.replace(b'"id":"cmpl-engine-7"', b'"id":"cmpl-gateway-1"').replace(
                f'"model":"{ENGINE_MODEL}"'.encode(), b'"model":"bot"'
            )
            assert asyncio.run(collect()) == expected
            assert call.usage == {"prompt_tokens": 3, "completion_tokens": 4}
