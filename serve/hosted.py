"""The gateway inside the engine's own server: `tuneloop serve --in-engine` (TUNELOOP_IN_ENGINE).

A gateway in its own process costs every streamed token two more socket hops and a second process
to wake, which on a small CPU machine takes a fifth of the engine's throughput (BENCHMARKS.md,
issue 14). In this mode the engine's server listens on the replica's port, and vLLM loads
`InEngine` as ASGI middleware (its `--middleware`): every request goes to the whole gateway
(serve/app.py) -- keys, routing, limits, capture, metrics, the registry follower -- except those
carrying the engine's own key (the parent's health checks and the gateway's adapter loads, over
loopback), which reach vLLM. Completions are ASGI calls into vLLM's app in this process
(serve/engine/inprocess.py): no socket between gateway and engine.

The parent process (`run_in_engine`) supervises that one process as it supervises an engine
(restarts, pid file, guard); the gateway in it is a worker of the kind serve/workers.py runs (an
EngineWatch, not a supervisor). What differs from the default mode: while the engine restarts
nothing listens on the port (a load balancer sees the replica not ready), and one process serves,
so `--workers` must stay 1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hmac
import logging
import os
import pickle
import secrets
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneloop.platform.settings import take_handed

if TYPE_CHECKING:
    from tuneloop.serve.config import GatewayConfig

log = logging.getLogger(__name__)

CONFIG_ENV = "TUNELOOP_IN_ENGINE_CONFIG"
"""The gateway's configuration, handed to the engine process (readable by its owner only)."""
MIDDLEWARE = f"{__name__}.InEngine"
STARTING = (
    b'{"error":{"message":"The gateway is starting; retry shortly.","type":"server_error",'
    b'"param":null,"code":"engine_unavailable"}}'
)


def run_in_engine(config: GatewayConfig, *, host: str, port: int) -> None:
    """Serve `config` with the gateway inside its engine, on `host:port`, until SIGTERM or SIGINT."""
    engine = dataclasses.replace(
        config.engine,
        host=host,
        port=port,
        extra_args=(*config.engine.extra_args, "--middleware", MIDDLEWARE),
        api_key=config.engine.api_key or secrets.token_urlsafe(32),
    )
    gateway = dataclasses.replace(config, engine=engine, engine_owner=os.getpid())
    handed = base64.b64encode(pickle.dumps(gateway)).decode()
    # The engine's server is the one clients reach: its idle connections last as the gateway's would.
    keep_alive = str(max(1, round(config.keep_alive)))
    engine = dataclasses.replace(
        engine, env=((CONFIG_ENV, handed), ("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", keep_alive))
    )
    asyncio.run(_supervise(dataclasses.replace(gateway, engine=engine)))


async def _supervise(config: GatewayConfig) -> None:
    from tuneloop.serve.workers import supervised_engine

    async with supervised_engine(config) as stop:
        log.info("gateway inside the engine on http://%s:%d/v1", config.engine.host, config.engine.port)
        await stop.wait()


class InEngine:
    """vLLM's `--middleware`: the gateway in front of vLLM's app, in the engine's process."""

    def __init__(self, app: ASGIApp) -> None:
        from tuneloop.serve.app import create_app

        self.engine = app
        config: GatewayConfig = pickle.loads(base64.b64decode(take_handed(CONFIG_ENV)))
        self._engine_auth = f"Bearer {config.engine.api_key}".encode()
        self.gateway = create_app(config, engine_app=app)
        self._lifespan: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._ready = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.engine(scope, self._on_shutdown(receive), self._on_startup(scope, send))
            return
        if scope["type"] == "http" and self._is_engine_call(scope):
            await self.engine(scope, receive, send)
            return
        if self._ready:
            await self.gateway(scope, receive, send)
        elif scope["type"] == "http":  # the gateway's startup has not made its state yet
            await _starting(send)
        else:  # a websocket: vLLM has some, the gateway none
            await send({"type": "websocket.close", "code": 1013})

    def _is_engine_call(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._engine_auth)
        return False

    def _on_startup(self, scope: Scope, send: Send) -> Send:
        """Start the gateway once vLLM's server has: its startup waits for the engine to answer
        over loopback, which it can only do once the server serves."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                engine_scope = {"app": scope.get("app"), "state": scope.get("state") or {}}
                self._lifespan = asyncio.create_task(self._run_gateway(engine_scope))
            await send(message)

        return wrapped

    def _on_shutdown(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self._lifespan is not None:
                self._stopping.set()
                with contextlib.suppress(Exception):
                    await self._lifespan
            return message

        return wrapped

    async def _run_gateway(self, engine_scope: dict[str, Any]) -> None:
        self.gateway.state.engine_scope = engine_scope
        async with self.gateway.router.lifespan_context(self.gateway):
            self._ready = True
            await self._stopping.wait()


async def _starting(send: Send) -> None:
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": STARTING})
