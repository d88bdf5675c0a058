"""Serving text completions: the shared completion pipeline with the completions schema."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from tuneloop.serve.completions.protocol import CompletionRequest
from tuneloop.serve.request.pipeline import complete


async def create_completion(request: Request) -> Response:
    """Validate, route and proxy one completion (streaming or not)."""
    return await complete(request, "completions", CompletionRequest)
