"""The body of POST /v1/chat/completions, as far as the gateway checks it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tuneloop.serve.errors import bad_request
from tuneloop.serve.protocol import RequestModel, SamplingFields


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = Field(None, description="Text, or OpenAI content parts.")
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _no_embeddings(cls, content: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        # vLLM takes `prompt_embeds` (and image/audio embeds) as content parts once the engine
        # accepts embeddings; only the gateway may send embeddings (protocol.CLIENT_FORBIDDEN_FIELDS).
        for part in content if isinstance(content, list) else []:
            kind = part.get("type")
            if not isinstance(kind, str):
                raise ValueError("every content part needs a string `type`")
            if "embeds" in kind or any("embeds" in key for key in part):
                raise ValueError(f"content parts of type {kind!r} are not accepted; send text")
        return content


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name of max_tokens.")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(
        None, max_length=128, description="Functions the model may call."
    )
    tool_choice: str | dict[str, Any] | None = Field(None, description="none, auto, required, or a function.")

    def check_tools(self, parser: str) -> None:
        """Refuse (400) tools this replica's engine cannot call: without a tool-call parser the engine
        would answer in plain text, or fail naming vLLM's flags rather than ours. `tool_choice: none`
        asks for text, which any engine gives."""
        if self.tools and self.tool_choice != "none" and not parser:
            raise bad_request(
                "Tool calling is not enabled on this server: its operator sets TUNELOOP_TOOL_CALL_PARSER "
                "(the vLLM tool-call parser for the model's chat format, e.g. hermes) to enable it.",
                param="tools",
                code="tools_not_enabled",
            )
