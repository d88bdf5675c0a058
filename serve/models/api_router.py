"""GET /v1/models and GET /v1/models/{model} (the openai SDK's `models.list` and `models.retrieve`)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tuneloop.serve.models.protocol import ModelCard, ModelList
from tuneloop.serve.models.serving import list_models, retrieve_model

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    return await list_models(request)


# `:path`: version names hold no slash, but a client may ask for a folder-named base model.
@router.get("/v1/models/{model:path}")
async def model(request: Request, model: str) -> ModelCard:
    return await retrieve_model(request, model)
