"""Hypothesis strategies for bad gateway requests: every body they make must be refused with a 4xx.

A body is a valid request (chat, completion or feedback) with at least one field set to a value
that is surely wrong for it (wrong type, out of range, unknown model, over a limit), plus random
extras; or no valid request at all: random bytes (bad UTF-8 included), JSON that is not an
object, deeply nested arrays, long unbroken words. Values that are wrong only by vLLM's rules
come back from the engine as 4xx and must be passed on as such.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=32)
SMALL_TEXT = st.text(max_size=12)
JUNK: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    FLOATS,
    SMALL_TEXT,
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
# Not whole numbers, made rather than filtered (filters make generation slow).
FRACTIONS = st.integers(min_value=-(2**20), max_value=2**20).map(lambda i: i + 0.5)
EXTRA_FIELDS = ["top_k", "min_tokens", "logit_bias", "response_format", "echo", "logprobs", "suffix", "user"]


def _common_invalid(model: str) -> dict[str, st.SearchStrategy[Any]]:
    """For each field both endpoints share: values it must never accept."""
    del model
    return {
        "model": st.one_of(
            st.none(),
            st.integers(),
            st.just(""),
            st.lists(SMALL_TEXT, max_size=2),
            st.text(min_size=513, max_size=520),
            st.from_regex(r"zz-[a-z0-9]{1,12}(@[0-9]{1,3})?", fullmatch=True),  # no such model
            st.sampled_from(["bot@3", "bot@4", "bot@99"]),  # a candidate, a rejected, a missing version
        ),
        "max_tokens": st.one_of(st.integers(max_value=0), SMALL_TEXT, st.booleans(), FRACTIONS),
        "temperature": st.one_of(
            st.floats(min_value=2.001, max_value=1e30),
            st.floats(max_value=-0.001, min_value=-1e30),
            SMALL_TEXT,
            st.booleans(),
            st.lists(st.integers(), max_size=2),
        ),
        "top_p": st.one_of(
            st.floats(min_value=1.001, max_value=1e9), st.floats(max_value=0.0, min_value=-1e9)
        ),
        "n": st.one_of(st.integers(max_value=0), st.integers(min_value=17), SMALL_TEXT),
        "stop": st.one_of(
            st.integers(),
            st.lists(st.integers(), min_size=1, max_size=3),
            st.lists(SMALL_TEXT, min_size=17, max_size=20),
        ),
        "stream": st.one_of(SMALL_TEXT, st.integers()),
        "stream_options": st.one_of(SMALL_TEXT, st.fixed_dictionaries({"include_usage": SMALL_TEXT})),
        "presence_penalty": st.one_of(st.floats(min_value=2.01, max_value=1e9), SMALL_TEXT),
        "seed": st.one_of(FRACTIONS, SMALL_TEXT),
        "user": st.text(min_size=257, max_size=260),
    }


CHAT_INVALID: dict[str, st.SearchStrategy[Any]] = {
    "messages": st.one_of(
        st.none(),
        SMALL_TEXT,
        st.just([]),
        st.lists(st.none(), min_size=1, max_size=2),
        st.lists(
            st.fixed_dictionaries({"role": SMALL_TEXT.map(lambda r: "x" + r), "content": SMALL_TEXT}),
            min_size=1,
            max_size=2,
        ),
        st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.integers()}), min_size=1),
        # Longer than TUNELOOP_MAX_PROMPT_LENGTH (65,536): one unbroken word.
        st.integers(min_value=65_537, max_value=70_000).map(lambda n: [{"role": "user", "content": "a" * n}]),
    ),
}
COMPLETION_INVALID: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.one_of(
        st.none(),
        st.integers(),
        st.just([]),
        st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
        st.lists(FRACTIONS, min_size=1, max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
        st.lists(st.just([]), min_size=1, max_size=2),
        st.lists(SMALL_TEXT, min_size=33, max_size=40),  # over TUNELOOP_MAX_PROMPTS (32)
        st.integers(min_value=65_537, max_value=70_000).map(lambda n: "b" * n),  # one long word
        st.just([[10**7]]),  # a token id the engine does not have (vLLM's 400)
    ),
    "logprobs": st.one_of(st.integers(min_value=21), st.integers(max_value=-1)),
}
FEEDBACK_INVALID: dict[str, st.SearchStrategy[Any]] = {
    "request_id": st.one_of(st.none(), st.integers(), st.just(""), st.text(min_size=129, max_size=130)),
    "rating": st.one_of(st.integers(max_value=0), st.integers(min_value=6), SMALL_TEXT, FLOATS),
    "label": st.one_of(st.just(""), st.integers(), st.text(min_size=65, max_size=70)),
    "surprise": JUNK,  # unknown fields are errors there
}


@st.composite
def _mutated(draw: st.DrawFn, base: dict[str, Any], invalid: dict[str, st.SearchStrategy[Any]]) -> bytes:
    body = dict(base)
    for field in draw(st.lists(st.sampled_from(EXTRA_FIELDS), max_size=2, unique=True)):
        body[field] = draw(JUNK)
    for field in draw(st.lists(st.sampled_from(sorted(invalid)), min_size=1, max_size=2, unique=True)):
        body[field] = draw(invalid[field])
    return json.dumps(body).encode()


def _nested(depth: int) -> bytes:
    return b'{"model": "bot", "prompt": ' + b"[" * depth + b"]" * depth + b"}"


RAW_BODIES: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=64),  # mostly not UTF-8, never JSON
    st.binary(min_size=1, max_size=16).map(lambda b: b'{"model": "bot", "prompt": "' + b + b'\xff\xfe"}'),
    st.sampled_from(
        [b"", b"{", b"}", b"null", b"42", b'"str"', b"[{}]", b'{"model": NaN}', "\ufeff{}".encode()]
    ),
    st.integers(min_value=300, max_value=20_000).map(_nested),
)


def bad_requests(model: str = "bot") -> st.SearchStrategy[tuple[str, bytes]]:
    """(path, body) pairs the gateway must refuse with a 4xx."""
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    completion = {"model": model, "prompt": "hi", "max_tokens": 1}
    feedback = {"request_id": "cmpl-nothing", "rating": 3}
    common = _common_invalid(model)
    return st.one_of(
        st.tuples(st.just("/v1/chat/completions"), _mutated(chat, {**common, **CHAT_INVALID})),
        st.tuples(st.just("/v1/completions"), _mutated(completion, {**common, **COMPLETION_INVALID})),
        st.tuples(st.just("/v1/feedback"), _mutated(feedback, FEEDBACK_INVALID)),
        st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/feedback"]), RAW_BODIES),
    )
