"""The body of POST /v1/completions, as far as the gateway checks it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from tuneloop.serve.protocol import SamplingFields

TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Prompt = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1)]
)


class CompletionRequest(SamplingFields):
    prompt: Prompt = Field(description="Text, texts, token ids, or lists of token ids.")
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    max_completion_tokens: int | None = Field(
        None, ge=1, exclude=True, description="Chat's newer name of max_tokens; sent on as max_tokens."
    )

    @model_validator(mode="after")
    def _max_completion_tokens(self) -> CompletionRequest:
        # vLLM's completions endpoint only knows max_tokens and would drop this field with a log line:
        # it becomes max_tokens, and two different limits are a contradiction, not a choice.
        limit = self.max_completion_tokens
        if limit is not None:
            if self.max_tokens is not None and self.max_tokens != limit:
                raise ValueError(
                    f"max_tokens ({self.max_tokens}) and max_completion_tokens ({limit}) differ; send one"
                )
            self.max_tokens = limit
        return self
