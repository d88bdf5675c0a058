"""The answers of /v1/files, in OpenAI's shape (the openai SDK's `FileObject`, `FileDeleted`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

PURPOSES = ("fine-tune",)
"""What clients may upload for; `fine-tune-results` files are written by jobs (their metrics CSV)."""
RESULTS_PURPOSE = "fine-tune-results"


class FileObject(BaseModel):
    id: str = Field(description="`file-<hex>`: what `training_file` and `validation_file` name.")
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None = Field(None, description="What the validation found: format and examples.")


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
