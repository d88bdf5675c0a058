"""POST /v1/completions (the body is read after the key is checked, as for chat)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from tuneloop.serve.completions.serving import create_completion

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await create_completion(request)
