"""The gateway's hook for prompt-tuned and P-tuned versions (serve/request/hooks.py documents the contract).

A request for such a version becomes a `/v1/completions` request for the *base* model whose input
is `prompt_embeds` = the version's virtual tokens + the embedded prompt, exactly what peft feeds
the model. Chats are rendered here with the base model's chat template (chat.py says why, and
reshapes the answer back into a chat).

Building the embeddings needs torch and the tokenizer, so it runs in a worker thread, never on the
event loop, and the gateway only imports torch the first time such a version is used. What it
loads is cached: one `PromptEmbedder` per base model folder (the input embedding matrix and the
tokenizer) and the virtual tokens per version folder, which never changes (versions are immutable).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.platform.errors import ArtifactError
from tuneloop.serve.errors import bad_request
from tuneloop.serve.prompt_embeds.chat import plain_messages, pop_chat_fields
from tuneloop.serve.prompt_embeds.embedder import PromptEmbedder, encode_for_vllm

if TYPE_CHECKING:
    import torch

MAX_CACHED_VERSIONS = 256
"""Virtual tokens kept in memory (a few KiB to a few MiB each); beyond, least recently used go."""


class PromptEmbedsCache:
    """Embedders per base model and virtual tokens per version, loaded once, safe across threads."""

    def __init__(self, max_versions: int = MAX_CACHED_VERSIONS) -> None:
        self._lock = threading.Lock()
        self._embedders: dict[str, PromptEmbedder] = {}
        # Tokenizers are not safe to call from several threads at once; the lookups are quick.
        self._use: dict[str, threading.Lock] = {}
        self._virtual: OrderedDict[Path, torch.Tensor] = OrderedDict()
        self._max_versions = max_versions

    def embedder(self, base_dir: str) -> tuple[PromptEmbedder, threading.Lock]:
        """The embedder of the model in `base_dir` and the lock to hold while using it (blocking)."""
        with self._lock:  # first use loads for seconds; everyone else waits for that one load
            if base_dir not in self._embedders:
                self._embedders[base_dir] = PromptEmbedder(Path(base_dir))
                self._use[base_dir] = threading.Lock()
            return self._embedders[base_dir], self._use[base_dir]

    def virtual_tokens(self, adapter_dir: Path, embedder: PromptEmbedder) -> torch.Tensor:
        """The version's (n_virtual, hidden) tokens, read once per version folder (blocking)."""
        with self._lock:
            cached = self._virtual.get(adapter_dir)
            if cached is not None:
                self._virtual.move_to_end(adapter_dir)
                return cached
        virtual = embedder.load_virtual_tokens(adapter_dir)
        with self._lock:
            self._virtual[adapter_dir] = virtual
            while len(self._virtual) > self._max_versions:
                self._virtual.popitem(last=False)
        return virtual


CACHE = PromptEmbedsCache()


async def rewrite_request(
    endpoint: str, body: dict[str, Any], *, adapter_dir: Path, engine_model: str, max_model_len: int
) -> dict[str, Any]:
    """The `/v1/completions` body that answers `body` (a client's validated body for `endpoint`)."""
    return await asyncio.to_thread(_build, endpoint, dict(body), adapter_dir, engine_model, max_model_len)


async def prepare_version(adapter_dir: Path, engine_model: str) -> None:
    """Load the base model's embedder and the version's virtual tokens before traffic needs them."""
    await asyncio.to_thread(_load, adapter_dir, engine_model)


def _load(adapter_dir: Path, engine_model: str) -> tuple[PromptEmbedder, threading.Lock, torch.Tensor]:
    embedder, lock = CACHE.embedder(engine_model)
    try:
        virtual = CACHE.virtual_tokens(adapter_dir, embedder)
    except ArtifactError as exc:
        # A stored version whose files are malformed: it can never be served, whoever asks (400).
        raise bad_request(
            f"the version cannot be served: {exc}", param="model", code="model_not_servable"
        ) from None
    return embedder, lock, virtual


def _build(
    endpoint: str, body: dict[str, Any], adapter_dir: Path, engine_model: str, max_model_len: int
) -> dict[str, Any]:
    if "prompt_embeds" in body:  # the edge refuses it already; never forward one a client made
        raise bad_request("`prompt_embeds` cannot be sent to the gateway.", param="prompt_embeds")
    embedder, lock, virtual = _load(adapter_dir, engine_model)
    if endpoint == "chat/completions":
        pop_chat_fields(body)
        messages = plain_messages(body.pop("messages"))
        add_generation_prompt = bool(body.pop("add_generation_prompt", True))
        longest = body.pop("max_completion_tokens", None)
        if body.get("max_tokens") is None:
            # The completions endpoint would stop at 16 tokens; a chat may use what the prompt leaves
            # (vLLM caps max_tokens at the context length minus the prompt).
            body["max_tokens"] = longest if longest is not None else max_model_len
        with lock:
            try:
                embeds = embedder.chat_embeds(messages, virtual, add_generation_prompt=add_generation_prompt)
            except Exception as exc:  # a template that refuses the conversation (roles out of order, ...)
                raise bad_request(f"the chat cannot be rendered: {exc}", param="messages") from None
        tensors = [embeds]
    elif endpoint == "completions":
        if body.pop("echo", None):
            raise bad_request(
                "`echo` is not supported for prompt-tuned versions: the prompt reaches the engine as "
                "embeddings, not text",
                param="echo",
                code="unsupported_parameter",
            )
        add_special_tokens = bool(body.pop("add_special_tokens", True))
        prompts = _prompt_list(body.pop("prompt"))
        with lock:
            ids = [
                embedder.tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]
                if isinstance(p, str)
                else p
                for p in prompts
            ]
            vocabulary = int(embedder.embeddings.shape[0])
            if any(token >= vocabulary for row in ids for token in row):
                raise bad_request(f"token ids must be below {vocabulary}", param="prompt")
            tensors = [embedder.embed_ids(row, virtual) for row in ids]
    else:
        raise bad_request(f"/v1/{endpoint} is not served for prompt-tuned versions")
    encoded = [encode_for_vllm(tensor) for tensor in tensors]
    body["model"] = engine_model
    body["prompt_embeds"] = encoded[0] if len(encoded) == 1 else encoded
    return body


def _prompt_list(prompt: Any) -> Sequence[str | Sequence[int]]:
    """A completion prompt (text, texts, token ids, lists of token ids) as a list of prompts."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(token, int) for token in prompt):
        return [prompt]
    return list(prompt)
