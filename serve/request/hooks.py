"""HOOK: serving prompt-tuned and P-tuned versions (manifest `serving == "prompt_embeddings"`).

vLLM has no prompt adapters; such a version is served by sending the *base* model the prompt as
embeddings with the learned virtual tokens in front. That work belongs to `serve/prompt_embeds/`,
which the gateway reaches through two functions, looked up here (the lookup keeps torch out of the
gateway until such a version is used, and lets a build without it refuse them cleanly):

    # in tuneloop/serve/prompt_embeds/__init__.py
    async def rewrite_request(
        endpoint: str,              # "completions" or "chat/completions", as the client called it
        body: dict[str, Any],       # the client's validated JSON body (model already rewritten)
        *,
        adapter_dir: Path,          # local, checksummed copy of the version (safetensors + JSON)
        engine_model: str,          # the base model's engine-side name (its local folder)
        max_model_len: int,         # the engine's context length
    ) -> dict[str, Any]:            # the body to POST to the engine's /v1/completions

    async def prepare_version(adapter_dir: Path, engine_model: str) -> None:
        # load what rewrite_request needs, before an alias is switched to the version

The body is always for `/v1/completions` (the only endpoint where vLLM takes `prompt_embeds`);
for a chat request the gateway turns the engine's text completion back into a chat completion
(prompt_embeds/chat.py). Both may raise `tuneloop.serve.errors.OpenAIError` (e.g. a 400 for a
chat option they cannot honour). If the module cannot be imported, or TUNELOOP_PROMPT_EMBEDS is
off, such versions are refused with an OpenAI-shaped error naming the method: nothing is faked.
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
PREPARE_FUNCTION = "prepare_version"


class RewriteRequest(Protocol):
    """The signature `rewrite_request` must have (see the module docstring)."""

    def __call__(
        self, endpoint: str, body: dict[str, Any], *, adapter_dir: Path, engine_model: str, max_model_len: int
    ) -> Awaitable[dict[str, Any]]: ...


class PrepareVersion(Protocol):
    """The signature `prepare_version` must have (see the module docstring)."""

    def __call__(self, adapter_dir: Path, engine_model: str) -> Awaitable[None]: ...


@functools.cache
def _module() -> Any:
    try:
        return importlib.import_module(PROMPT_EMBEDS_MODULE)
    except ImportError as exc:
        log.warning(
            "prompt-embeddings serving unavailable: %s cannot be imported (%s)", PROMPT_EMBEDS_MODULE, exc
        )
        return None


def prompt_embeds_hook() -> RewriteRequest | None:
    """The prompt-embeddings rewrite function if it is implemented, else None (looked up once)."""
    function = getattr(_module(), PROMPT_EMBEDS_FUNCTION, None)
    return cast(RewriteRequest, function) if callable(function) else None


def prepare_hook() -> PrepareVersion | None:
    """The function that warms a version up before it is switched to, if there is one."""
    function = getattr(_module(), PREPARE_FUNCTION, None)
    return cast(PrepareVersion, function) if callable(function) else None
