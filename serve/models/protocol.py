"""The answer of GET /v1/models, in OpenAI's shape plus vLLM's `parent` and `root`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelCard(BaseModel):
    id: str = Field(description="What to send as `model`.")
    object: Literal["model"] = "model"
    created: int = Field(description="When this gateway started (Unix seconds).")
    owned_by: str = "tuneloop"
    parent: str | None = Field(None, description="The base model, for aliases and adapter versions.")
    root: str = Field(description="The version an alias is switched to; for others, the model itself.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
