"""Listing models: the base model and every alias and version the caller's key may use.

A key never learns of adapters outside its scope: they are absent from its list, and retrieving
one answers the same 404 as a name that does not exist.
"""

from __future__ import annotations

import time

from fastapi import Request

from tuneloop.serve.errors import model_not_found
from tuneloop.serve.models.protocol import ModelCard, ModelList
from tuneloop.serve.request.pipeline import replica_of

STARTED = int(time.time())


async def list_models(request: Request) -> ModelList:
    replica = replica_of(request)
    principal = await replica.keys.authenticate(request.headers.get("authorization"))
    follower = replica.follower
    entries = replica.resolver.visible(principal, follower.snapshot, follower.live)
    return ModelList(
        data=[ModelCard(id=e.id, created=STARTED, parent=e.parent, root=e.root) for e in entries]
    )


async def retrieve_model(request: Request, model: str) -> ModelCard:
    for card in (await list_models(request)).data:
        if card.id == model:
            return card
    raise model_not_found(model)
