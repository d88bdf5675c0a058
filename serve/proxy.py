"""Proxying one completion request to the engine with httpx: whole answers, or SSE streamed through.

Streams are passed on event by event as vLLM produces them (never buffered), each with `model` set
back to what the client asked for. The engine is always asked for usage in its last stream event,
so token counts are recorded for every request; that event is dropped again unless the client asked
for it with `stream_options.include_usage`.

A `Call` carries one request's bookkeeping (in-flight slot, adapter lease, metric labels, timings)
and is closed exactly once, however the request ends: answered, refused, or the client gone
mid-stream (`ProxiedStream` closes it even when Starlette never starts iterating the body).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from tuneloop.monitoring import metrics
from tuneloop.serve.errors import OpenAIError, engine_unavailable, from_engine
from tuneloop.serve.routing.resolver import Target

VERSION_HEADER = "X-Tuneloop-Version"
# Connecting to a loopback engine is instant or refused; generation itself may take minutes.
ENGINE_TIMEOUT = httpx.Timeout(connect=2.0, read=600.0, write=30.0, pool=5.0)


@dataclass(eq=False)
class Call:
    """One completion request's bookkeeping; `close()` records its metrics and frees what it holds."""

    endpoint: str
    started: float = field(default_factory=time.monotonic)
    alias: str = ""
    version: str = ""
    status: int = 200
    first_token_at: float | None = None
    usage: dict[str, Any] | None = None
    _cleanups: list[Callable[[], None]] = field(default_factory=list)
    _closed: bool = False

    def label(self, target: Target) -> None:
        self.alias, self.version = target.alias, target.version

    def hold(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` at close (release a slot, a lease, a gauge)."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        labels = (self.endpoint, self.alias, self.version)
        metrics.REQUESTS.labels(*labels, str(self.status)).inc()
        metrics.REQUEST_SECONDS.labels(*labels).observe(time.monotonic() - self.started)
        if self.first_token_at is not None:
            ttft = self.first_token_at - self.started
            metrics.TIME_TO_FIRST_TOKEN_SECONDS.labels(self.alias, self.version).observe(ttft)
        if self.usage:
            prompt, generated = self.usage.get("prompt_tokens"), self.usage.get("completion_tokens")
            if isinstance(prompt, int):
                metrics.PROMPT_TOKENS.labels(self.alias, self.version).inc(prompt)
            if isinstance(generated, int):
                metrics.GENERATION_TOKENS.labels(self.alias, self.version).inc(generated)
        for cleanup in reversed(self._cleanups):
            cleanup()


async def forward(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], target: Target, call: Call
) -> JSONResponse:
    """POST a non-streaming request to the engine; the answer with the client's model name."""
    try:
        response = await client.post(url, json=body, timeout=ENGINE_TIMEOUT)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
        raise engine_unavailable("The engine is not reachable (restarting?); retry shortly.") from None
    except httpx.HTTPError as exc:
        raise engine_unavailable(f"The engine stopped while answering ({type(exc).__name__}).") from None
    if response.status_code != 200:
        raise from_engine(
            response.status_code,
            response.content,
            engine_model=target.engine_model,
            requested=target.requested,
        )
    data = response.json()
    if isinstance(data, dict):
        data["model"] = target.requested
        call.usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    return JSONResponse(data, headers=_headers(target))


async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    target: Target,
    call: Call,
    *,
    include_usage: bool,
) -> Response:
    """Start a streaming request; an engine refusal before the first event is an ordinary error."""
    options = dict(body.get("stream_options") or {})
    options["include_usage"] = True
    request = client.build_request(
        "POST", url, json={**body, "stream_options": options}, timeout=ENGINE_TIMEOUT
    )
    try:
        upstream = await client.send(request, stream=True)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
        raise engine_unavailable("The engine is not reachable (restarting?); retry shortly.") from None
    except httpx.HTTPError as exc:
        raise engine_unavailable(f"The engine stopped while answering ({type(exc).__name__}).") from None
    if upstream.status_code != 200:
        raw = await upstream.aread()
        await upstream.aclose()
        raise from_engine(
            upstream.status_code, raw, engine_model=target.engine_model, requested=target.requested
        )
    return ProxiedStream(upstream, target, call, include_usage=include_usage)


class ProxiedStream(StreamingResponse):
    """The engine's SSE stream rewritten event by event; closes upstream and call however it ends."""

    def __init__(self, upstream: httpx.Response, target: Target, call: Call, *, include_usage: bool) -> None:
        self._upstream, self._target, self._call, self._include_usage = upstream, target, call, include_usage
        super().__init__(self._events(), media_type="text/event-stream", headers=_headers(target))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._upstream.aclose()  # a client gone mid-stream aborts the engine's request too
            self._call.close()

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            async for line in self._upstream.aiter_lines():
                event = self._rewrite(line)
                if event is not None:
                    yield event
        except httpx.HTTPError as exc:
            self._call.status = 503
            yield engine_unavailable(f"The engine stopped mid-stream ({type(exc).__name__}); retry.").sse()

    def _rewrite(self, line: str) -> bytes | None:
        if not line.startswith("data:"):
            return f"{line}\n\n".encode() if line.strip() else None
        payload = line[5:].strip()
        try:
            event = json.loads(payload) if payload != "[DONE]" else None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            return f"data: {payload}\n\n".encode()
        if "error" in event:
            status = event["error"].get("code") if isinstance(event["error"], dict) else None
            error = from_engine(
                status if isinstance(status, int) else 500,
                payload.encode(),
                engine_model=self._target.engine_model,
                requested=self._target.requested,
            )
            self._call.status = error.status
            return error.sse()
        event["model"] = self._target.requested
        choices, usage = event.get("choices"), event.get("usage")
        if isinstance(usage, dict):
            self._call.usage = usage
        if choices and self._call.first_token_at is None and _has_token(choices):
            self._call.first_token_at = time.monotonic()
        if not choices and usage and not self._include_usage:
            return None  # the usage event we asked for on our own account
        return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def _has_token(choices: list[Any]) -> bool:
    for choice in choices:
        if isinstance(choice, dict) and (choice.get("text") or (choice.get("delta") or {}).get("content")):
            return True
    return False


def _headers(target: Target) -> dict[str, str]:
    # Which version answered: the client may use it, and it is within the key's scope by construction.
    return {VERSION_HEADER: target.version}


def refuse(call: Call, error: OpenAIError) -> OpenAIError:
    """Record a refusal's status on the call (closed by the caller) and hand the error back to raise."""
    call.status = error.status
    return error
