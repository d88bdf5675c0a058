"""Proxying one completion request to the engine: whole answers, or SSE streamed through.

Streams are passed on as vLLM produces them (never held back), each event with `model` set back to
what the client asked for and `id` set to the gateway's request id (also in `X-Request-Id`, the id
feedback refers to). The engine is always asked for usage in its last stream event, so token counts
are recorded for every request; that event is dropped again unless the client asked for it with
`stream_options.include_usage`. With `as_chat`, the engine's text completion (a prompt-tuned
version's chat, served by /v1/completions) is reshaped into a chat completion on the way.

This is the gateway's hot path, and on a small machine every microsecond it spends per token is
taken from the engine next to it, so: the engine is called with aiohttp (its C HTTP parser costs
well under half of httpx's pure-Python stack per event, measured with bench/serve.py), the events
that arrived together are rewritten and sent on together, and an event is rewritten by replacing
the engine's exact `"id":"…"` and `"model":"…"` pairs in its bytes -- which cannot occur inside a
JSON string, where quotes are escaped -- rather than by decoding and encoding it. Events are only
decoded when something must be read from them at once: the first token's time, the usage, an error,
or a chat to reshape. The answer text capture keeps is read from the events' bytes many events at
a time (`Call.keep_event`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator
from typing import Any, TypeAlias

import aiohttp
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from tuneloop.serve.engine.inprocess import InProcessResponse, InProcessSession
from tuneloop.serve.engine.launch import ENGINE_KEEP_ALIVE_S
from tuneloop.serve.errors import OpenAIError, engine_unavailable, from_engine
from tuneloop.serve.prompt_embeds.chat import ChatChunks, chat_completion
from tuneloop.serve.request.call import Call
from tuneloop.serve.routing.resolver import Target

VERSION_HEADER = "X-Tuneloop-Version"
REQUEST_ID_HEADER = "X-Request-Id"
# Connecting to a loopback engine is instant or refused; generation itself may take minutes.
ENGINE_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=2.0, sock_read=600.0)
UNREACHABLE = "The engine is not reachable (restarting?); retry shortly."
DONE = b"data: [DONE]\n\n"
DRAIN_S = 1.0  # after [DONE], how long the engine may take to end its response before it is cut
RAW_SEND = "tuneloop.raw_send"
"""The scope key of the server's own `send` (set by serve/app.py), which streamed events use."""


def engine_session(headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """The session completions are proxied with (create it on the running event loop).

    `headers` go with every request: the engine's API key (serve/engine/launch.py).
    """
    # No pool limit: the in-flight cap (TUNELOOP_MAX_IN_FLIGHT) bounds connections already.
    # Idle connections are dropped before the engine would close them (ENGINE_KEEP_ALIVE_S).
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=ENGINE_KEEP_ALIVE_S / 2)
    return aiohttp.ClientSession(
        connector=connector, timeout=ENGINE_TIMEOUT, auto_decompress=False, headers=headers
    )


Session: TypeAlias = aiohttp.ClientSession | InProcessSession
"""Over loopback, or into the engine's app when the gateway runs inside it (serve/hosted.py)."""


async def forward(
    session: Session,
    url: str,
    body: dict[str, Any],
    target: Target,
    call: Call,
    *,
    as_chat: bool = False,
) -> JSONResponse:
    """POST a non-streaming request to the engine; the answer with the client's model name and id."""
    try:
        async with session.post(url, json=body, headers={REQUEST_ID_HEADER: call.request_id}) as response:
            raw = await response.read()
            status = response.status
    except aiohttp.ClientConnectorError:
        raise engine_unavailable(UNREACHABLE) from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise engine_unavailable(f"The engine stopped while answering ({type(exc).__name__}).") from None
    if status != 200:
        raise from_engine(status, raw, engine_model=target.engine_model, requested=target.requested)
    data = json.loads(raw)
    if isinstance(data, dict):
        if as_chat:
            data = chat_completion(data)
        data["model"], data["id"] = target.requested, call.request_id
        call.usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        call.keep_answer(data.get("choices"))
    return JSONResponse(data, headers=_headers(target, call))


async def open_stream(
    session: Session,
    url: str,
    body: dict[str, Any],
    target: Target,
    call: Call,
    *,
    include_usage: bool,
    as_chat: bool = False,
) -> Response:
    """Start a streaming request; an engine refusal before the first event is an ordinary error."""
    options = dict(body.get("stream_options") or {})
    options["include_usage"] = True
    try:
        upstream = await session.post(
            url, json={**body, "stream_options": options}, headers={REQUEST_ID_HEADER: call.request_id}
        )
    except aiohttp.ClientConnectorError:
        raise engine_unavailable(UNREACHABLE) from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise engine_unavailable(f"The engine stopped while answering ({type(exc).__name__}).") from None
    if upstream.status != 200:
        try:
            raw = await upstream.read()
        finally:
            upstream.release()
        raise from_engine(upstream.status, raw, engine_model=target.engine_model, requested=target.requested)
    return ProxiedStream(upstream, target, call, include_usage=include_usage, as_chat=as_chat)


class ProxiedStream(StreamingResponse):
    """The engine's SSE stream rewritten on the fly; closes upstream and call however it ends."""

    def __init__(
        self,
        upstream: aiohttp.ClientResponse | InProcessResponse,
        target: Target,
        call: Call,
        *,
        include_usage: bool,
        as_chat: bool,
    ) -> None:
        self._upstream, self._target, self._call, self._include_usage = upstream, target, call, include_usage
        self._chunks = ChatChunks() if as_chat else None
        self._finished = False
        # The OpenAI client hangs up right after [DONE], often before the engine closes its side:
        # a stream whose [DONE] went out was answered in full, not abandoned.
        self._done_sent = False
        # (old, new) of the `"id":…` pair, then of the `"model":…` pair: learnt from the first event.
        self._swaps: tuple[tuple[bytes, bytes], tuple[bytes, bytes]] | None = None
        self._closing = False  # the response's last write is made (or being made)
        self._pending = b""  # the start of an event whose end has not arrived yet
        self._stream = self._events()  # what __call__ sends
        super().__init__(self._stream, media_type="text/event-stream", headers=_headers(target, call))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream: the start through the app's middleware, the events straight to the server.

        The middleware around a route only notes that the response started, so the events skip
        it and go to the server's own `send` (`RAW_SEND`, put in the scope by serve/app.py); the
        event that carries [DONE] also ends the response, one socket write instead of two; and the
        disconnect watch is one plain task rather than Starlette's task group. A client that hangs
        up cancels the stream at once (its `http.disconnect`), as Starlette's does. An engine in
        this process (serve/hosted.py) writes the events on from its own task as it makes them.
        """
        write = scope.get(RAW_SEND, send)
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not self._closing:  # after the last event the server reports a disconnect too
                gone = True
                task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            if isinstance(self._upstream, InProcessResponse):
                await self._pipe(self._upstream, write)
            else:
                await self._relay(write)
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        except OSError:  # the server's "client disconnected" on a write
            pass
        finally:
            self._closing = True
            watcher.cancel()
            if self._finished:
                self._upstream.release()
            else:
                self._upstream.close()  # a client gone mid-stream aborts the engine's request too
                if self._call.status == 200 and not self._done_sent:
                    self._call.status = 499  # the client went away before the end (nginx's code for it)
            self._call.close()

    async def _relay(self, write: Send) -> None:
        """Pull the engine's stream (over a socket) and send each batch of events on."""
        async for out in self._stream:
            await self._send_out(write, out)
            if self._closing:
                break
        else:
            await self._send_out(write, b"")
        await self._stream.aclose()
        if not self._finished:  # nothing follows [DONE] but the end of the engine's response
            await self._drain()

    async def _pipe(self, upstream: InProcessResponse, write: Send) -> None:
        """The engine in this process sends each batch of events on itself, as it makes them."""

        async def forward(chunk: bytes) -> None:
            out = self._take(chunk)
            if out and not self._closing:
                await self._send_out(write, out)

        try:
            await upstream.pipe(forward)
            out = self._rest()
        except aiohttp.ClientError as exc:  # after [DONE] the answer is whole, as in `_relay`'s drain
            out = b"" if self._closing else self._broken(exc)
        self._finished = True
        if out and not self._closing:
            await self._send_out(write, out)
        if not self._closing:
            await self._send_out(write, b"")

    async def _send_out(self, write: Send, out: bytes) -> None:
        """Write `out`; the event that ends the stream (or b"" at its end) also ends the response."""
        self._closing = out.endswith(DONE) or not out
        await write({"type": "http.response.body", "body": out, "more_body": not self._closing})

    async def _drain(self) -> None:
        """Read the engine's response to its end, so that its connection is kept for the next one."""
        with contextlib.suppress(TimeoutError, aiohttp.ClientError):
            await asyncio.wait_for(self._upstream.content.read(), DRAIN_S)
            self._finished = True

    async def _events(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self._upstream.content.iter_any():
                if out := self._take(chunk):
                    yield out
            if out := self._rest():
                yield out
        except (TimeoutError, aiohttp.ClientError) as exc:
            yield self._broken(exc)
        self._finished = True

    def _take(self, chunk: bytes) -> bytes:
        """The events `chunk` completes, rewritten: whatever arrived together goes out together."""
        whole = not self._pending and chunk.endswith(b"\n\n") and b"\r" not in chunk
        if whole and chunk.find(b"\n\n") == len(chunk) - 2:
            out = self._rewrite(chunk[:-2])  # one whole event: what the engine in this process sends
        else:
            *events, self._pending = (self._pending + chunk).replace(b"\r\n", b"\n").split(b"\n\n")
            out = b"".join(self._rewrite(event) for event in events)
        self._done_sent = self._done_sent or DONE in out
        return out

    def _rest(self) -> bytes:
        """An event the engine did not end with a blank line, at the end of its stream."""
        return self._rewrite(self._pending) if self._pending.strip() else b""

    def _broken(self, exc: BaseException) -> bytes:
        self._call.status = 503
        return engine_unavailable(f"The engine stopped mid-stream ({type(exc).__name__}); retry.").sse()

    def _rewrite(self, event: bytes) -> bytes:
        """One SSE event as the client gets it (b"" to drop it)."""
        if not event.startswith(b"data:"):
            return event + b"\n\n" if event.strip() else b""
        payload = event[5:].strip()
        if payload == b"[DONE]":
            return DONE
        call = self._call
        if self._chunks is None and b'"error"' not in payload:
            if self._swaps is None:
                self._learn(payload)
            swaps = self._swaps
            if swaps and swaps[0][0] in payload and swaps[1][0] in payload:
                # The fast path, the first event included: read only what must be read, rewrite
                # the bytes; everything else reaches the client exactly as the engine wrote it.
                call.keep_event(payload)  # its text is read later, with the events around it
                must_read = call.first_token_at is None or b'"usage":{' in payload
                if must_read and not self._inspect(json.loads(payload), keep=False):
                    return b""
                for old, new in swaps:
                    payload = payload.replace(old, new, 1)
                return b"data: " + payload + b"\n\n"
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return b"data: " + payload + b"\n\n"
        if "error" in parsed:
            error = parsed["error"]
            status = error.get("code") if isinstance(error, dict) else None
            refused = from_engine(
                status if isinstance(status, int) else 500,
                payload,
                engine_model=self._target.engine_model,
                requested=self._target.requested,
            )
            call.status = refused.status
            return refused.sse()
        if self._chunks is not None:
            parsed = self._chunks.chunk(parsed)
        parsed["model"], parsed["id"] = self._target.requested, call.request_id
        if not self._inspect(parsed):
            return b""
        return f"data: {json.dumps(parsed, separators=(',', ':'))}\n\n".encode()

    def _learn(self, payload: bytes) -> None:
        """From the engine's first event: its exact `"id":…` and `"model":…` bytes, and ours."""
        try:
            parsed = json.loads(payload)
        except ValueError:
            return
        if (
            isinstance(parsed, dict)
            and isinstance(parsed.get("id"), str)
            and isinstance(parsed.get("model"), str)
        ):
            self._swaps = (
                (_pair("id", parsed["id"]), _pair("id", self._call.request_id)),
                (_pair("model", parsed["model"]), _pair("model", self._target.requested)),
            )

    def _inspect(self, event: dict[str, Any], *, keep: bool = True) -> bool:
        """Note the first token, usage and (`keep`) answer text; False for the usage event nobody
        asked for."""
        choices, usage = event.get("choices"), event.get("usage")
        if isinstance(usage, dict):
            self._call.usage = usage
        if choices and self._call.first_token_at is None and _has_token(choices):
            self._call.first_token_at = time.monotonic()
        if keep:
            self._call.keep_answer(choices)
        return bool(choices) or not usage or self._include_usage


def _pair(key: str, value: str) -> bytes:
    """`"key":"value"` exactly as vLLM's compact JSON writes it."""
    return f'"{key}":{json.dumps(value, ensure_ascii=False)}'.encode()


def _has_token(choices: list[Any]) -> bool:
    for choice in choices:
        if isinstance(choice, dict) and (choice.get("text") or (choice.get("delta") or {}).get("content")):
            return True
    return False


def _headers(target: Target, call: Call) -> dict[str, str]:
    # Which version answered: the client may use it, and it is within the key's scope by construction.
    return {VERSION_HEADER: target.version, REQUEST_ID_HEADER: call.request_id}


def refuse(call: Call, error: OpenAIError) -> OpenAIError:
    """Record a refusal's status on the call (closed by the caller) and hand the error back to raise."""
    call.status = error.status
    return error
