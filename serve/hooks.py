"""HOOK: serving prompt-tuned and P-tuned versions (manifest `serving == "prompt_embeddings"`).

vLLM has no prompt adapters; such a version is served by sending the *base* model the prompt as
embeddings with the learned virtual tokens in front. That work belongs to `serve/prompt_embeds/`
(another engineer's package). The gateway calls it through exactly one function, looked up here:

    # in tuneloop/serve/prompt_embeds/__init__.py
    async def rewrite_request(
        endpoint: str,              # "completions" or "chat/completions", as the client called it
        body: dict[str, Any],       # the client's validated JSON body (model already rewritten)
        *,
        adapter_dir: Path,          # local, checksummed copy of the version (safetensors + JSON)
        engine_model: str,          # the base model's engine-side name
    ) -> dict[str, Any]:            # the body to POST to the engine's same endpoint
        ...

It may raise `tuneloop.serve.errors.OpenAIError` (e.g. a 400 for an endpoint it cannot serve).
Until that function exists, requests for such versions are answered 501 with an OpenAI-shaped error
naming the method: nothing is faked. When it lands, the replica's engine also needs the flags of
`prompt_embeds.prompt_embeds_engine_args()` in `EngineConfig.extra_args` (serve/config.py builds
the EngineConfig), which this gateway does not pass yet.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol, cast

log = logging.getLogger(__name__)
PROMPT_EMBEDS_MODULE = "tuneloop.serve.prompt_embeds"
PROMPT_EMBEDS_FUNCTION = "rewrite_request"


class RewriteRequest(Protocol):
    """The signature `rewrite_request` must have (see the module docstring)."""

    def __call__(
        self, endpoint: str, body: dict[str, Any], *, adapter_dir: Path, engine_model: str
    ) -> Awaitable[dict[str, Any]]: ...


@functools.cache
def prompt_embeds_hook() -> RewriteRequest | None:
    """The prompt-embeddings rewrite function if it is implemented, else None (looked up once)."""
    try:
        module = importlib.import_module(PROMPT_EMBEDS_MODULE)
    except ImportError as exc:
        log.warning(
            "prompt-embeddings serving unavailable: %s cannot be imported (%s)", PROMPT_EMBEDS_MODULE, exc
        )
        return None
    function = getattr(module, PROMPT_EMBEDS_FUNCTION, None)
    return cast(RewriteRequest, function) if callable(function) else None
