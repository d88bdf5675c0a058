"""Completion stream events as vLLM's server writes them, for tests and bench/stream_cost.py."""

from __future__ import annotations

import json
from typing import Any


def vllm_event(text: str, *, model: str, usage: dict[str, int] | None = None) -> bytes:
    """One `data:` event: compact JSON, vLLM's fields in its order; the usage event has no choices."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None, "stop_reason": None,
              "token_ids": None}  # fmt: skip
    event: dict[str, Any] = {
        "id": "cmpl-engine-7", "object": "text_completion", "created": 1, "model": model,
        "choices": [] if usage else [choice], "usage": usage,
    }  # fmt: skip
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
