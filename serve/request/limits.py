"""Per-request limits: what one client may ask of the gateway and its engine in one request.

The gateway is the one door every tenant shares, so no single request may hold what the others
need: the body is counted while it streams in (413 the moment it passes TUNELOOP_MAX_BODY_BYTES,
never read whole first; the JSON parse that follows holds the interpreter for a time proportional
to its size), and the number and length of prompts, `n` times the prompts, and the length of a
prompt-tuned version's prompt (tokenised and embedded in this process) are bounded before any of
that work is done. Each refusal is an OpenAI-shaped 4xx naming the setting that set the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from tuneloop.platform import settings
from tuneloop.serve.errors import OpenAIError, bad_request


@dataclass(frozen=True)
class RequestLimits:
    """The limits of one replica (defaults: the settings' defaults)."""

    max_body_bytes: int = 2**20
    max_prompts: int = 32
    max_prompt_length: int = 65_536
    max_sequences: int = 64
    max_embed_prompt_length: int = 16_384

    @classmethod
    def from_settings(cls) -> RequestLimits:
        return cls(
            max_body_bytes=settings.TUNELOOP_MAX_BODY_BYTES.get(),
            max_prompts=settings.TUNELOOP_MAX_PROMPTS.get(),
            max_prompt_length=settings.TUNELOOP_MAX_PROMPT_LENGTH.get(),
            max_sequences=settings.TUNELOOP_MAX_SEQUENCES.get(),
            max_embed_prompt_length=settings.TUNELOOP_MAX_EMBED_PROMPT_LENGTH.get(),
        )


def body_too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"The request body is over {limit} bytes (TUNELOOP_MAX_BODY_BYTES).",
        code="request_too_large",
        headers={"Connection": "close"},  # the rest of the body is never read
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read chunk by chunk and refused (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def prompts_of(parsed: Any) -> list[str | list[int]]:
    """A completion's prompts as a list (text, texts, token ids, lists of token ids)."""
    prompt = getattr(parsed, "prompt", None)
    if prompt is None:
        return []
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(token, int) for token in prompt):
        return [prompt]
    return list(prompt)


def chat_length(parsed: Any) -> int:
    """Characters of every text a chat's messages hold (content strings and text parts)."""
    total = 0
    for message in getattr(parsed, "messages", None) or []:
        content = message.content
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                total += len(text) if isinstance(text, str) else 0
    return total


def check_request(parsed: Any, limits: RequestLimits) -> None:
    """Refuse (400) a request that asks for more prompts, longer prompts or more sequences than allowed."""
    messages = getattr(parsed, "messages", None)
    if messages is not None:
        count, longest, param = 1, chat_length(parsed), "messages"
    else:
        prompts = prompts_of(parsed)
        count, longest, param = len(prompts), max((len(p) for p in prompts), default=0), "prompt"
        if count > limits.max_prompts:
            raise bad_request(
                f"{count} prompts in one request; at most {limits.max_prompts} (TUNELOOP_MAX_PROMPTS).",
                param="prompt",
                code="too_many_prompts",
            )
    if longest > limits.max_prompt_length:
        raise bad_request(
            f"A prompt of length {longest}; at most {limits.max_prompt_length} characters or token ids "
            "(TUNELOOP_MAX_PROMPT_LENGTH).",
            param=param,
            code="prompt_too_long",
        )
    n = getattr(parsed, "n", None) or 1
    if n * count > limits.max_sequences:
        raise bad_request(
            f"n={n} times {count} prompt(s) asks for {n * count} sequences; at most "
            f"{limits.max_sequences} (TUNELOOP_MAX_SEQUENCES).",
            param="n",
            code="too_many_sequences",
        )


def check_embed_prompt(parsed: Any, limits: RequestLimits) -> None:
    """Refuse (400) a prompt-tuned version's prompt too long to tokenise and embed in the gateway."""
    messages = getattr(parsed, "messages", None)
    if messages is not None:
        longest = sum(len(str(m.content or "")) for m in messages)
    else:
        longest = max((len(p) for p in prompts_of(parsed)), default=0)
    if longest > limits.max_embed_prompt_length:
        raise bad_request(
            f"A prompt of length {longest} for a prompt-tuned version; at most "
            f"{limits.max_embed_prompt_length} (TUNELOOP_MAX_EMBED_PROMPT_LENGTH).",
            param="messages" if messages is not None else "prompt",
            code="prompt_too_long",
        )
