"""The demo's users: they call the alias through the OpenAI endpoint and say, as feedback, whether the
answer was right (under the labelling policy of the moment), correcting it when it was not."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from tuneloop.demo.data import Tweet

if TYPE_CHECKING:
    from openai import OpenAI

CONCURRENCY = 4


@dataclass(frozen=True)
class Served:
    tweet: Tweet
    version: str  # the version that answered (the gateway's `model` in the response)
    answer: str
    right: bool


def ask(client: OpenAI, model: str, tweet: Tweet, max_tokens: int = 8) -> tuple[str, str, str]:
    """(request id, answering version, answer) for one tweet, greedy. The version comes from the
    gateway's X-Tuneloop-Version header (the body keeps the `model` the client asked for)."""
    from tuneloop.serve.request.proxy import VERSION_HEADER

    messages: Any = tweet.messages()  # plain dicts: what the SDK's TypedDicts describe
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0.0
    )
    out = raw.parse()
    version = raw.headers.get(VERSION_HEADER, out.model)
    return out.id, version, (out.choices[0].message.content or "").strip()


def serve_and_judge(
    client: OpenAI, gateway: str, key: str, alias: str, tweets: Sequence[Tweet], *, drifted: bool
) -> list[Served]:
    """Send every tweet to `alias`, then post feedback on each answer: `correct`, or the right answer."""
    from tuneloop.platform.answers import exact_match

    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:

        def one(tweet: Tweet) -> Served:
            request_id, version, answer = ask(client, alias, tweet)
            right = tweet.answer(drifted)
            ok = exact_match(answer, right) == 1.0
            body = {"request_id": request_id, **({"label": "correct"} if ok else {"corrected_answer": right})}
            http.post("/v1/feedback", json=body).raise_for_status()
            return Served(tweet, version, answer, ok)

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return list(pool.map(one, tweets))


def accuracy(served: Sequence[Served]) -> float:
    return sum(s.right for s in served) / len(served) if served else float("nan")
