"""The path every completion request takes, shared by /v1/chat/completions and /v1/completions.

key (401) -> body (413 while it streams in; 400) -> limits (400) -> model name (404 / 400 / 501)
-> engine up (503) -> in-flight slot (429) -> adapter lease (loaded on demand) or prompt embeddings
(prompt-tuned versions) -> proxy. Checks that cost nothing come first, and nothing is held (slot,
lease) before the request is known to be acceptable. Whatever happens, the request's `Call` is
closed once: metrics recorded, slot and lease given back, and the request handed to capture
(serve/request/capture.py) if it resolved to a model.

Every request gets its id here (`chatcmpl-…` / `cmpl-…`): the `id` of the answer and of every
stream event, the `X-Request-Id` header of every answer (errors included), the engine's request id
(its logs match), and the id clients give feedback on (`POST /v1/feedback`).

A prompt-tuned or P-tuned version is answered by the base model's /v1/completions with prompt
embeddings (serve/prompt_embeds), chats included, which the proxy reshapes back into chats.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.responses import Response

from tuneloop.monitoring import metrics
from tuneloop.serve.engine.lora import AdapterLoadError
from tuneloop.serve.errors import OpenAIError, bad_request, engine_unavailable
from tuneloop.serve.protocol import SamplingFields, engine_body, parse_body
from tuneloop.serve.replica import Replica
from tuneloop.serve.request.call import Call
from tuneloop.serve.request.hooks import prompt_embeds_hook
from tuneloop.serve.request.limits import check_embed_prompt, check_request, read_body
from tuneloop.serve.request.proxy import REQUEST_ID_HEADER, forward, open_stream
from tuneloop.serve.routing.resolver import Target


def replica_of(request: Request) -> Replica:
    replica: Replica = request.app.state.replica
    return replica


async def complete(request: Request, endpoint: str, schema: type[SamplingFields]) -> Response:
    """Answer one completion request (see the module docstring)."""
    replica = replica_of(request)
    call = Call(endpoint=endpoint, request_id=new_request_id(endpoint))
    streaming = False
    try:
        principal = await replica.keys.authenticate(request.headers.get("authorization"))
        limits = replica.config.limits
        parsed = parse_body(await read_body(request, limits.max_body_bytes), schema)
        check_request(parsed, limits)
        replica.require_synced()
        follower = replica.follower
        target = replica.resolver.resolve(parsed.model, principal, follower.snapshot, follower.live)
        if target.kind == "prompt_embeddings":
            check_embed_prompt(parsed, limits)  # before any tokenising or embedding
        call.label(target)
        if replica.capture.on:
            replica.capture.watch(call, parsed, principal.key_id)
        replica.require_engine()
        call.hold(replica.admit())
        gauge = metrics.IN_FLIGHT.labels(target.alias, target.version)
        gauge.inc()
        call.hold(gauge.dec)
        body = engine_body(parsed, target.engine_model)
        engine_endpoint, as_chat = endpoint, False
        if target.kind == "lora":
            call.hold(await _lease(replica, target))
        elif target.kind == "prompt_embeddings":
            body = await _prompt_embeds(replica, endpoint, body, target)
            # vLLM takes embeddings on /v1/completions only; a chat's answer is reshaped back.
            engine_endpoint, as_chat = "completions", endpoint == "chat/completions"
        url = f"{replica.engine_url}/v1/{engine_endpoint}"
        if parsed.stream:
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            response = await open_stream(
                replica.session, url, body, target, call, include_usage=include_usage, as_chat=as_chat
            )
            streaming = True  # from here the stream closes the call when it ends
            return response
        return await forward(replica.session, url, body, target, call, as_chat=as_chat)
    except OpenAIError as exc:
        call.status = exc.status
        raise exc.with_headers({REQUEST_ID_HEADER: call.request_id}) from None
    except asyncio.CancelledError:
        call.status = 499  # the client went away (nginx's code for it)
        raise
    except Exception:
        call.status = 500
        raise
    finally:
        if not streaming:
            call.close()


async def _lease(replica: Replica, target: Target) -> Callable[[], None]:
    try:
        lease = await replica.residency.acquire(target.version)
    except AdapterLoadError as exc:
        raise _load_failed(target, exc) from None
    return lease.release


def _load_failed(target: Target, exc: AdapterLoadError) -> OpenAIError:
    """A version that could not be loaded: a 503 to retry when that may pass, else (a malformed
    adapter config, a rank or module the engine refuses) a 400 naming the version and why, like any
    version this replica cannot serve."""
    if exc.retryable:
        return engine_unavailable(f"`{target.requested}` could not be loaded yet; retry shortly.")
    return bad_request(
        f"`{target.requested}` cannot be served: {exc}", param="model", code="model_not_servable"
    )


async def _prompt_embeds(
    replica: Replica, endpoint: str, body: dict[str, Any], target: Target
) -> dict[str, Any]:
    hook = prompt_embeds_hook()
    assert hook is not None and target.info is not None  # the resolver refuses these versions otherwise
    try:
        adapter_dir: Path = await replica.loras.local_dir(target.info.ref)
    except AdapterLoadError as exc:
        raise _load_failed(target, exc) from None
    return await hook(
        endpoint,
        dict(body),
        adapter_dir=adapter_dir,
        engine_model=target.engine_model,
        max_model_len=replica.config.engine.max_model_len,
    )


def new_request_id(endpoint: str) -> str:
    """A fresh, unguessable request id in OpenAI's style (`chatcmpl-…` for chats, `cmpl-…` otherwise)."""
    prefix = "chatcmpl" if endpoint == "chat/completions" else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex}"
