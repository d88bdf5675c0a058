"""Per-request limits (serve/request/limits.py): counted as the body streams in, each refusal named."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.responses import JSONResponse

from tuneloop.serve.chat_completions.protocol import ChatCompletionRequest
from tuneloop.serve.completions.protocol import CompletionRequest
from tuneloop.serve.errors import OpenAIError, install_handlers
from tuneloop.serve.protocol import parse_body
from tuneloop.serve.request.limits import RequestLimits, check_embed_prompt, check_request, read_body

LIMITS = RequestLimits(
    max_body_bytes=1000, max_prompts=4, max_prompt_length=50, max_sequences=8, max_embed_prompt_length=20
)


def _refusal(raw: bytes, schema: type[CompletionRequest] | type[ChatCompletionRequest]) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        check_request(parse_body(raw, schema), LIMITS)
    return caught.value


@pytest.mark.parametrize(
    ("raw", "code", "setting"),
    [
        (b'{"model": "m", "prompt": ["a", "b", "c", "d", "e"]}', "too_many_prompts", "TUNELOOP_MAX_PROMPTS"),
        (b'{"model": "m", "prompt": [[1], [2], [3], [4], [5]]}', "too_many_prompts", "TUNELOOP_MAX_PROMPTS"),
        (b'{"model": "m", "prompt": "' + b"x" * 51 + b'"}', "prompt_too_long", "TUNELOOP_MAX_PROMPT_LENGTH"),
        (
            b'{"model": "m", "prompt": [' + b"1," * 50 + b"1]}",
            "prompt_too_long",
            "TUNELOOP_MAX_PROMPT_LENGTH",
        ),
        (b'{"model": "m", "prompt": ["a", "b"], "n": 5}', "too_many_sequences", "TUNELOOP_MAX_SEQUENCES"),
    ],
)
def test_completion_limits_are_400_naming_the_setting(raw: bytes, code: str, setting: str) -> None:
    error = _refusal(raw, CompletionRequest)
    assert error.status == 400 and error.code == code and setting in error.message


def test_chat_limits_count_every_message_text() -> None:
    long = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 30 + b'"},'
    long += b'{"role": "user", "content": [{"type": "text", "text": "' + b"y" * 30 + b'"}]}]}'
    assert _refusal(long, ChatCompletionRequest).code == "prompt_too_long"
    many = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 9}'
    assert _refusal(many, ChatCompletionRequest).code == "too_many_sequences"
    fine = parse_body(
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 8}', ChatCompletionRequest
    )
    check_request(fine, LIMITS)


def test_prompt_tuned_prompts_are_bounded_before_embedding() -> None:
    parsed = parse_body(b'{"model": "m", "prompt": "' + b"x" * 21 + b'"}', CompletionRequest)
    check_request(parsed, LIMITS)
    with pytest.raises(OpenAIError, match="TUNELOOP_MAX_EMBED_PROMPT_LENGTH"):
        check_embed_prompt(parsed, LIMITS)


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = FastAPI()
    install_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await read_body(request, LIMITS.max_body_bytes))})

    with TestClient(app) as test_client:
        yield test_client


def test_the_body_limit_holds_for_declared_and_chunked_bodies(client: TestClient) -> None:
    assert client.post("/echo", content=b"x" * 1000).json() == {"size": 1000}
    declared = client.post("/echo", content=b"x" * 1001)
    assert declared.status_code == 413 and "TUNELOOP_MAX_BODY_BYTES" in declared.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must be counted while reading
        for _ in range(10_000):
            yield b"y" * 400

    chunked = client.post("/echo", content=chunks())
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
