"""Calling the engine's server in this process: what `aiohttp.ClientSession.post` does over a socket.

When the gateway runs inside the engine's own server (serve/hosted.py), its completions are ASGI
calls to vLLM's app, not HTTP requests: no socket, no second process to wake per event. The proxy
(serve/request/proxy.py) is written against the few parts of aiohttp it uses -- `post` awaited or
used as a context manager, and a response's `status`, `read()`, `content.iter_any()`,
`content.read()`, `release()` and `close()` -- and `InProcessSession` provides exactly those.

The engine's events wait in a small queue, or (`pipe`) go straight on to the client from the
engine's own task: either way, when the client reads slowly vLLM's `send` waits, as a full socket
would make it. Closing a response before its end tells the engine the client went away
(`http.disconnect`) and cancels the call, so the engine aborts the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from starlette.types import ASGIApp, Message

QUEUE_EVENTS = 64
"""Events the engine may be ahead of the client before its `send` waits."""


class InProcessSession:
    """`post` into `app` (vLLM's ASGI app, with `scope` the fields every call shares)."""

    def __init__(self, app: ASGIApp, scope: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        self._app, self._scope = app, dict(scope)
        self._headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    def post(self, url: str, *, json: Any, headers: Mapping[str, str] | None = None) -> _Pending:
        body = _dumps(json)
        path = urlsplit(url).path
        extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        scope = {
            **self._scope,
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                *self._headers,
                *extra,
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "state": dict(self._scope.get("state") or {}),
        }
        return _Pending(InProcessResponse(self._app, scope, body))

    async def close(self) -> None:
        return None


class _Pending:
    """What `post` returns: await it for the response once it started, or `async with` it."""

    def __init__(self, response: InProcessResponse) -> None:
        self._response = response

    def __await__(self) -> Generator[Any, None, InProcessResponse]:
        return self._response.started().__await__()

    async def __aenter__(self) -> InProcessResponse:
        return await self._response.started()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._response.release()


class InProcessResponse:
    """One call of the engine's app, run as a task.

    Its body goes to whoever consumes it first: `iter_any` (or `read`) pulls it from a bounded
    queue; `pipe(sink)` has the engine's own task hand each chunk to `sink` as it sends it, with no
    queue and no switch to another task per event (the streaming path of the gateway in the engine).
    Until one of them starts, the engine's first body chunk waits: the two never mix.
    """

    def __init__(self, app: ASGIApp, scope: dict[str, Any], body: bytes) -> None:
        self.status = 0
        self._body: bytes | None = body
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_EVENTS)
        self._sink: Callable[[bytes], Awaitable[None]] | None = None
        self._sink_error: BaseException | None = None
        self._consumer = asyncio.Event()  # set once `iter_any` or `pipe` takes the body
        self._started = False  # the engine sent its status
        self._answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gone = asyncio.Event()
        self._ended = False
        self._task = asyncio.create_task(self._call(app, scope))
        self.content = self  # aiohttp's `response.content` is the body stream

    async def started(self) -> InProcessResponse:
        await self._answered
        if not self._started:  # the app ended without answering
            self._raise_from_task()
            raise aiohttp.ServerDisconnectedError("the engine answered nothing")
        return self

    async def _call(self, app: ASGIApp, scope: dict[str, Any]) -> None:
        async def receive() -> Message:
            if self._body is not None:
                body, self._body = self._body, None
                return {"type": "http.request", "body": body, "more_body": False}
            await self._gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status, self._started = message["status"], True
                self._answer()
            elif message["type"] == "http.response.body":
                body = message.get("body")
                if body:
                    if not self._consumer.is_set():
                        await self._consumer.wait()
                    if self._sink is None:
                        await self._queue.put(body)
                    else:
                        try:
                            await self._sink(body)
                        except BaseException as exc:  # the engine's call ends with it; `pipe` raises it
                            self._sink_error = exc
                            raise
                if not message.get("more_body", False) and self._sink is None:
                    await self._queue.put(None)

        try:
            await app(scope, receive, send)
        finally:
            if not self._started:
                self.status = 500
            self._answer()
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)  # an app that stopped mid-body ends the stream too

    def _answer(self) -> None:
        if not self._answered.done():
            self._answered.set_result(None)

    async def pipe(self, sink: Callable[[bytes], Awaitable[None]]) -> None:
        """Have the engine hand each body chunk to `sink`, from its own task, until its call ends.

        Raises what `sink` raised, or aiohttp.ClientPayloadError when the engine failed.
        """
        self._sink = sink
        self._consumer.set()
        await asyncio.wait((self._task,))
        if self._sink_error is not None:
            raise self._sink_error
        self._raise_from_task()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it comes: whatever is waiting is joined into one chunk."""
        self._consumer.set()
        while not self._ended:
            # An app that ended with the queue full could not add the end mark: its end is the mark.
            chunk = None if self._queue.empty() and self._task.done() else await self._queue.get()
            parts = []
            while chunk is not None:
                parts.append(chunk)
                if self._queue.empty():
                    break
                chunk = self._queue.get_nowait()
            if parts:
                yield b"".join(parts)
            if chunk is None:
                self._ended = True
                self._raise_from_task()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_any()])

    def release(self) -> None:
        """Done with the response (it ended, or the caller gave up): stop the call if it still runs."""
        if not self._task.done():
            self.close()

    def close(self) -> None:
        """The client went away: the engine sees a disconnect and its call is cancelled."""
        self._gone.set()
        self._task.cancel()

    def _raise_from_task(self) -> None:
        """An app that failed is a broken stream, as a connection that drops is."""
        if self._task.done() and not self._task.cancelled() and self._task.exception() is not None:
            raise aiohttp.ClientPayloadError(f"the engine failed: {type(self._task.exception()).__name__}")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
