"""The gateway's FastAPI application: one replica's routes, error handlers and lifecycle.

`create_app(config)` builds it; the replica (serve/replica.py) starts with the app and stops with
it, engine included. No docs or OpenAPI routes: the API is OpenAI's, documented there, and the
fewer routes a gateway exposes the less it can leak.

The two completion routes are the hot path: a POST to them is handed to its endpoint directly, not
through FastAPI's router, middleware and dependency solving, which took about a quarter of the
gateway's own per-request time in the engine's process (py-spy, issue 14). They are declared once,
in their routers (which still answer them for other methods), and fail the same way:
`error_response`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tuneloop.serve.chat_completions.api_router import router as chat_router
from tuneloop.serve.completions.api_router import router as completions_router
from tuneloop.serve.config import GatewayConfig
from tuneloop.serve.errors import error_response, install_handlers
from tuneloop.serve.feedback.api_router import router as feedback_router
from tuneloop.serve.files.api_router import router as files_router
from tuneloop.serve.fine_tuning.api_router import router as fine_tuning_router
from tuneloop.serve.models.api_router import router as models_router
from tuneloop.serve.ops.api_router import router as ops_router
from tuneloop.serve.replica import Replica
from tuneloop.serve.request.proxy import RAW_SEND

Endpoint = Callable[[Request], Awaitable[Response]]
HOT_ROUTES: dict[str, Endpoint] = {
    route.path: route.endpoint
    for route in (*chat_router.routes, *completions_router.routes)
    if isinstance(route, APIRoute) and "POST" in route.methods
}
"""POST routes answered without FastAPI's routing: path -> endpoint (which takes the request only)."""


class GatewayApp(FastAPI):
    """FastAPI that also hands routes the server's own `send`, for streamed events (RAW_SEND), and
    answers the completion routes itself (see the module docstring)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[RAW_SEND] = send
            endpoint = HOT_ROUTES.get(scope["path"]) if scope["method"] == "POST" else None
            if endpoint is not None:
                scope["app"] = self
                request = Request(scope, receive)
                try:
                    response = await endpoint(request)
                except Exception as exc:
                    response = await error_response(request, exc)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    config: GatewayConfig,
    *,
    on_fatal: Callable[[str], None] = lambda _m: None,
    engine_app: ASGIApp | None = None,
) -> FastAPI:
    """The gateway for one replica; `on_fatal(message)` is called if its engine can never start.

    `engine_app`: vLLM's app, when the gateway runs inside the engine's server (serve/hosted.py,
    which sets `app.state.engine_scope` before the startup).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = None if engine_app is None else (engine_app, app.state.engine_scope)
        replica = Replica(config, on_fatal=on_fatal, engine_app=engine)
        app.state.replica = replica
        await replica.start()
        try:
            yield
        finally:
            await replica.stop()

    app = GatewayApp(
        title="tuneloop gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    install_handlers(app)
    routers = (chat_router, completions_router, feedback_router, files_router, fine_tuning_router)
    for router in (*routers, models_router, ops_router):
        app.include_router(router)
    return app
