"""OpenAI-shaped errors at the HTTP edge: `{"error": {"message", "type", "param", "code"}}`.

Everything the gateway refuses is an `OpenAIError` carrying its HTTP status; the handlers installed
by `install_handlers` turn it, FastAPI's own errors and any unexpected exception into that shape, so
a client never sees a stack trace. `from_engine` re-shapes vLLM's answers (its context-length 400
included) and puts the client's model name back where vLLM wrote the engine-side one.

No error body shows where the replica keeps things: every message passes `scrubbed`, which
replaces the folders and URLs the replica registered with `hide_internal` (its home, cache,
artifact store, registry URL, the engine's model folder) and any object-store or file URI.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
_INTERNAL: list[str] = []
STORE_URI = re.compile(r"\b(?:s3a?|gs|gcs|az|abfss?|hdfs|file|sqlite|postgresql(?:\+\w+)?)://[^\s'\"`]*")


def hide_internal(*values: str) -> None:
    """Never show these strings (folders, URLs of this replica's state) in an error body."""
    for value in values:
        if value and len(value) > 1 and value not in _INTERNAL:
            _INTERNAL.append(value)
    _INTERNAL.sort(key=len, reverse=True)  # the longest first: a folder before its parent


def scrubbed(message: str) -> str:
    """`message` with internal folders and store URIs replaced by placeholders."""
    for value in _INTERNAL:
        if value in message:
            message = message.replace(value, "<internal>")
    return STORE_URI.sub("<store>", message)


class OpenAIError(Exception):
    """An error answered to the client as-is: status, message, type, param, code, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def with_headers(self, headers: Mapping[str, str]) -> OpenAIError:
        """A copy with more response headers (errors may be shared, e.g. a refusal kept per alias)."""
        return OpenAIError(
            self.status,
            self.message,
            type=self.type,
            param=self.param,
            code=self.code,
            headers={**self.headers, **headers},
        )

    def body(self) -> dict[str, Any]:
        message = scrubbed(self.message)
        return {"error": {"message": message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def sse(self) -> bytes:
        """The error as a server-sent event, for failures after a stream has started."""
        return f"data: {json.dumps(self.body())}\n\n".encode()


def model_not_found(name: str) -> OpenAIError:
    # One body for "does not exist" and "not in your scope": a key cannot probe for other adapters.
    return OpenAIError(
        404,
        f"The model `{name}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unauthorized(message: str, code: str = "invalid_api_key") -> OpenAIError:
    return OpenAIError(
        401, message, type="authentication_error", code=code, headers={"WWW-Authenticate": "Bearer"}
    )


def engine_unavailable(message: str, retry_after: int = 5) -> OpenAIError:
    return OpenAIError(
        503,
        message,
        type="server_error",
        code="engine_unavailable",
        headers={"Retry-After": str(retry_after)},
    )


def too_many_requests(limit: int) -> OpenAIError:
    return OpenAIError(
        429,
        f"The gateway is at its limit of {limit} requests in flight (TUNELOOP_MAX_IN_FLIGHT); retry shortly.",
        type="rate_limit_error",
        code="too_many_requests",
        headers={"Retry-After": "1"},
    )


def from_engine(status: int, raw: bytes, *, engine_model: str, requested: str) -> OpenAIError:
    """vLLM's error answer in our shape, with the client's model name in place of the engine's."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    detail = parsed.get("error", parsed) if isinstance(parsed, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        message: str = detail["message"]
        param = detail.get("param") if isinstance(detail.get("param"), str) else None
    else:
        message, param = raw.decode("utf-8", "replace")[:500] or f"engine answered {status}", None
    if engine_model and engine_model != requested:
        message = message.replace(engine_model, requested)
    if status == 400:
        code = "context_length_exceeded" if "maximum context length" in message else None
        return bad_request(message, param=param, code=code)
    if status == 404:
        # The engine lost an adapter we believed loaded (it restarted under us): worth a retry.
        return engine_unavailable(f"the engine is reloading `{requested}`; retry shortly", retry_after=1)
    if status in (413, 422):
        return bad_request(message, param=param)
    if status == 429:
        return OpenAIError(429, message, type="rate_limit_error", code="too_many_requests")
    if status >= 500:
        return OpenAIError(500, f"the engine failed on this request: {message}", type="server_error")
    return OpenAIError(status, message, param=param)


def install_handlers(app: FastAPI) -> None:
    """Answer every error in the OpenAI shape; log unexpected ones with their traceback, server-side."""
    app.add_exception_handler(OpenAIError, error_response)
    app.add_exception_handler(StarletteHTTPException, error_response)
    app.add_exception_handler(RequestValidationError, error_response)
    app.add_exception_handler(Exception, error_response)


async def error_response(request: Request, exc: Exception) -> JSONResponse:
    """What the client gets for `exc`, raised while answering `request` (the only mapping)."""
    if isinstance(exc, OpenAIError):
        return exc.response()
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            message = f"Unknown path {request.url.path}"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return OpenAIError(exc.status_code, message, type=kind, headers=exc.headers).response()
    if isinstance(exc, RequestValidationError):
        return bad_request(f"Invalid request: {exc.errors()[:3]}").response()
    log.exception("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
    message = "Internal error in the gateway; it has been logged."
    return OpenAIError(500, message, type="server_error").response()
