"""The body of POST /v1/chat/completions, as far as the gateway checks it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tuneloop.serve.protocol import RequestModel, SamplingFields


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = Field(None, description="Text, or OpenAI content parts.")
    name: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name of max_tokens.")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
