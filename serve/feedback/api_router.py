"""POST /v1/feedback (the body is read after the key is checked, as for completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tuneloop.serve.feedback.protocol import FeedbackOut
from tuneloop.serve.feedback.serving import create_feedback

router = APIRouter()


@router.post("/v1/feedback", status_code=201)
async def feedback(request: Request) -> FeedbackOut:
    return await create_feedback(request)
