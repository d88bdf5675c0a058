"""What goes into the capture store: a served request, and feedback on one (the API body).

`RequestRecord` is what the gateway hands the writer per request: plain data, built in the
request path, so it is a frozen dataclass rather than a validating model. `FeedbackIn` is the
body of the future `POST /v1/feedback`: strictly typed, so `"5"` is not a rating and a typo in a
field name is an error rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneloop.monitoring.capture.tables import CaptureStatus, utcnow

MAX_CORRECTED_ANSWER_CHARS = 100_000


@dataclass(frozen=True)
class RequestRecord:
    """One served request, as the gateway saw it (prompt and answer not yet redacted)."""

    request_id: str
    alias: str
    version: str
    prompt: str
    answer: str
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: CaptureStatus = CaptureStatus.OK
    created_at: datetime = field(default_factory=utcnow)
    key_id: int | None = None
    """Registry id of the API key that made the request (never the key itself)."""


class FeedbackIn(BaseModel):
    """Feedback on a captured request: a label, a rating, a corrected answer, or any of them."""

    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)

    request_id: str = Field(
        min_length=1, max_length=128, description="The `id` of the completion the feedback is about."
    )
    label: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="A short category, e.g. `good`, `wrong`, `off-topic`.",
    )
    rating: int | None = Field(default=None, ge=1, le=5, description="1 (bad) to 5 (good).")
    corrected_answer: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CORRECTED_ANSWER_CHARS,
        description="What the answer should have been; becomes training data for the next retraining.",
    )

    @model_validator(mode="after")
    def _says_something(self) -> Self:
        if self.label is None and self.rating is None and self.corrected_answer is None:
            raise ValueError("give at least one of label, rating or corrected_answer")
        return self
