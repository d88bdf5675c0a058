"""Malformed completion requests for fuzzing the gateway: every body must be refused with a 4xx."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

# Values that are wrong for each field whatever else the body holds (the gateway or vLLM refuses them).
INVALID: dict[str, list[Any]] = {
    "model": [None, -1, 1.5, "", [], {}, True, "no-such-model", "bot@99", "x" * 600],
    "messages": [
        None,
        "hi",
        [],
        [None],
        [{"role": "robot", "content": "hi"}],
        [{"role": "user", "content": 7}],
    ],
    "prompt": [None, 7, [], [[]], [-1], [1.5], {"a": 1}, [[1, 2], []], [True]],
    "max_tokens": [0, -1, 1.5, "2", True, 10**9],
    "temperature": [-1, 3, "hot", [], float("inf")],
    "top_p": [0, 2, "x"],
    "n": [0, 100, 1.5],
    "stop": [7, [1], ["x"] * 17],
    "stream": ["yes", 1],
    "stream_options": ["x", {"include_usage": "yes"}],
    "presence_penalty": [5, "x"],
    "seed": [1.5, "x"],
}
# Anything at all, possibly valid: mixed in before the one surely invalid field is set.
JUNK: list[Any] = [None, -1, 0, 1, 1.5, 10**15, "", "x" * 300, [], [None], {}, {"a": 1}, True, [[]], [-1]]
EXTRA_FIELDS = ["top_k", "min_tokens", "logit_bias", "response_format", "echo", "logprobs", "suffix", "user"]


def bad_bodies(base: str, rng: random.Random) -> Iterator[bytes]:
    """Malformed bodies: broken JSON, junk bytes, and JSON objects with at least one invalid field."""
    chat: dict[str, Any] = {"model": base, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    completion: dict[str, Any] = {"model": base, "prompt": "hi", "max_tokens": 2}
    for text in ['{"model": ', "{", "}", "null", "42", '"str"', "[{}]", '{"model": NaN}', "", "\ufeff{}"]:
        yield text.encode()
    for size in (1, 16, 256):
        yield bytes(rng.getrandbits(8) for _ in range(size))
    for _ in range(260):
        body = dict(rng.choice([chat, completion]))
        for _ in range(rng.randint(0, 3)):
            body[rng.choice([*INVALID, *EXTRA_FIELDS])] = rng.choice(JUNK)
        field = rng.choice(
            [f for f in INVALID if f not in ("messages", "prompt")]
            + (["messages"] if "messages" in body else ["prompt"])
        )
        body[field] = rng.choice(INVALID[field])
        yield json.dumps(body).encode()
    # Valid for the gateway, refused by vLLM: its 4xx must come back as ours.
    for extra in ({"max_tokens": 10**6}, {"top_k": -5}, {"min_tokens": -3}, {"logit_bias": {"x": 1}},
                  {"prompt": [[10**6]]}, {"response_format": {"type": "nope"}}):  # fmt: skip
        yield json.dumps({**completion, **extra}).encode()
