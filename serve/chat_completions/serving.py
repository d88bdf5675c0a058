"""Serving chat completions: the shared completion pipeline with the chat schema."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from tuneloop.serve.chat_completions.protocol import ChatCompletionRequest
from tuneloop.serve.request.pipeline import complete


async def create_chat_completion(request: Request) -> Response:
    """Validate, route and proxy one chat completion (streaming or not)."""
    return await complete(request, "chat/completions", ChatCompletionRequest)
