"""POST /v1/chat/completions.

The body is read by the handler, not declared to FastAPI, so the key is checked before the body is
parsed (a caller without a key learns nothing, not even what a valid body looks like).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from tuneloop.serve.chat_completions.serving import create_chat_completion

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await create_chat_completion(request)
