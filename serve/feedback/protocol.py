"""The body and answer of POST /v1/feedback.

The body is `FeedbackIn` of the capture store (monitoring/capture/schema.py), so the API and the
store validate the same way: a request id plus at least one of a label, a 1-5 rating or a corrected
answer; strict types, unknown fields refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tuneloop.monitoring.capture import FeedbackIn

__all__ = ["FeedbackIn", "FeedbackOut"]


class FeedbackOut(BaseModel):
    """What was stored."""

    id: str = Field(description="The feedback's own id, `fb-N`.")
    object: Literal["feedback"] = "feedback"
    request_id: str = Field(description="The completion the feedback is about.")
    model: str = Field(description="The `model` that request was sent to.")
    label: str | None = None
    rating: int | None = None
    corrected_answer: str | None = None
    created: int = Field(description="When it was stored (Unix seconds).")
