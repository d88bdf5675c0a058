"""serve/engine/inprocess.py: the engine's ASGI app called in-process the way aiohttp calls it over a
socket -- answers whole and streamed (pulled, or piped by the engine's own task), a failure
mid-stream, a client that leaves, and an engine that cannot run ahead of a slow reader. Real
Starlette apps stand in for vLLM's (same ASGI calls)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tuneloop.serve.engine.inprocess import QUEUE_EVENTS, InProcessSession

KEY = {"Authorization": "Bearer engine-key"}


def engine(events: int = 3, *, fail_after: int | None = None, sent: list[int] | None = None) -> Starlette:
    """An app with vLLM's shape: /v1/completions answers JSON, or SSE events when asked to stream."""

    async def completions(request: Request) -> Response:
        if request.headers.get("authorization") != KEY["Authorization"]:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse({"echo": body, "request_id": request.headers.get("x-request-id")})

        async def stream() -> AsyncIterator[bytes]:
            for i in range(events):
                if fail_after is not None and i == fail_after:
                    raise RuntimeError("engine broke")
                if sent is not None:
                    sent.append(i)
                yield f"data: {i}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])


def session(app: Starlette) -> InProcessSession:
    return InProcessSession(app, {"app": app, "state": {}}, KEY)


def test_a_whole_answer_with_its_body_and_headers() -> None:
    asyncio.run(_test_a_whole_answer_with_its_body_and_headers())


async def _test_a_whole_answer_with_its_body_and_headers() -> None:
    app = engine()
    async with session(app).post(
        "http://x/v1/completions", json={"prompt": "hi", "stream": False}, headers={"X-Request-Id": "r1"}
    ) as response:
        assert response.status == 200
        assert json.loads(await response.read()) == {
            "echo": {"prompt": "hi", "stream": False},
            "request_id": "r1",
        }
    refused = await InProcessSession(app, {"app": app}, {}).post("http://x/v1/completions", json={})
    assert refused.status == 401


def test_a_stream_arrives_in_order_and_ends() -> None:
    asyncio.run(_test_a_stream_arrives_in_order_and_ends())


async def _test_a_stream_arrives_in_order_and_ends() -> None:
    response = await session(engine(5)).post("http://x/v1/completions", json={"stream": True})
    assert response.status == 200
    body = b"".join([chunk async for chunk in response.content.iter_any()])
    assert body == b"".join(f"data: {i}\n\n".encode() for i in range(5)) + b"data: [DONE]\n\n"
    response.release()


def test_an_engine_that_fails_mid_stream_is_a_broken_stream() -> None:
    asyncio.run(_test_an_engine_that_fails_mid_stream_is_a_broken_stream())


async def _test_an_engine_that_fails_mid_stream_is_a_broken_stream() -> None:
    response = await session(engine(5, fail_after=2)).post("http://x/v1/completions", json={"stream": True})
    got = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for chunk in response.content.iter_any():
            got += chunk
    assert got == b"data: 0\n\ndata: 1\n\n"  # what came before the failure was delivered


def test_a_slow_reader_holds_the_engine_back_and_leaving_cancels_it() -> None:
    asyncio.run(_test_a_slow_reader_holds_the_engine_back_and_leaving_cancels_it())


async def _test_a_slow_reader_holds_the_engine_back_and_leaving_cancels_it() -> None:
    sent: list[int] = []
    response = await session(engine(10 * QUEUE_EVENTS, sent=sent)).post(
        "http://x/v1/completions", json={"stream": True}
    )
    await asyncio.sleep(0.1)  # nobody has taken the body: the engine's first event waits
    assert sent == [0]
    reader = aiter(response.content.iter_any())
    first = await anext(reader)  # what the engine sent before the reader woke, joined
    assert first.startswith(b"data: 0\n\n")
    await asyncio.sleep(0.2)  # the reader stops reading: the engine fills the queue, then waits
    read = first.count(b"\n\n")
    assert read + QUEUE_EVENTS <= len(sent) <= read + QUEUE_EVENTS + 3
    response.close()  # the client went away
    await asyncio.sleep(0.1)
    stopped_at = len(sent)
    await asyncio.sleep(0.2)
    assert len(sent) == stopped_at < 10 * QUEUE_EVENTS


def test_a_piped_stream_is_sent_on_by_the_engine_task_in_order() -> None:
    asyncio.run(_test_a_piped_stream_is_sent_on_by_the_engine_task_in_order())


async def _test_a_piped_stream_is_sent_on_by_the_engine_task_in_order() -> None:
    got: list[bytes] = []
    tasks: set[asyncio.Task[object] | None] = set()

    async def sink(chunk: bytes) -> None:
        tasks.add(asyncio.current_task())
        got.append(chunk)

    response = await session(engine(5)).post("http://x/v1/completions", json={"stream": True})
    await response.pipe(sink)
    assert b"".join(got) == b"".join(f"data: {i}\n\n".encode() for i in range(5)) + b"data: [DONE]\n\n"
    assert len(tasks) == 1 and asyncio.current_task() not in tasks  # all from the engine's one task


def test_a_piped_stream_ends_with_the_engine_failure_or_the_sink_failure() -> None:
    asyncio.run(_test_a_piped_stream_ends_with_the_engine_failure_or_the_sink_failure())


async def _test_a_piped_stream_ends_with_the_engine_failure_or_the_sink_failure() -> None:
    got: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        got.append(chunk)

    broken = await session(engine(5, fail_after=2)).post("http://x/v1/completions", json={"stream": True})
    with pytest.raises(aiohttp.ClientPayloadError):
        await broken.pipe(sink)
    assert got == [b"data: 0\n\n", b"data: 1\n\n"]

    sent: list[int] = []

    async def gone(chunk: bytes) -> None:
        if chunk.startswith(b"data: 3"):
            raise OSError("the client went away")

    response = await session(engine(100, sent=sent)).post("http://x/v1/completions", json={"stream": True})
    with pytest.raises(OSError, match="went away"):
        await response.pipe(gone)
    assert sent == [0, 1, 2, 3]  # the engine's stream stopped at the write that failed
