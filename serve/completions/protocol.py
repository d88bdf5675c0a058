"""The body of POST /v1/completions, as far as the gateway checks it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

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
