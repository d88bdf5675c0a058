"""Bad credentials stay cheap (serve/auth/keys.py): format first, then a bounded negative cache."""

from __future__ import annotations

import asyncio
import secrets
import threading
from typing import Any

import pytest

from tuneloop.platform.apikeys import hash_key, well_formed
from tuneloop.serve.auth.keys import KeyRing
from tuneloop.serve.errors import OpenAIError
from tuneloop.serve.routing.snapshot import Snapshot, key_info


class CountingRegistry:
    """Stands in for the registry's one key query; counts calls and how many ran at once."""

    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def find_api_key(self, key_hash: str) -> Any:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        threading.Event().wait(0.01)  # a database round trip
        with self._lock:
            self.running -= 1
        return None


def random_key() -> str:
    return "tl-" + secrets.token_urlsafe(32)


def test_well_formed_matches_what_create_key_makes() -> None:
    assert well_formed(random_key())
    for bad in ("tl-nope", "sk-" + "a" * 43, "tl-" + "a" * 42, "tl-" + "a" * 44, "tl-" + "!" * 43, ""):
        assert not well_formed(bad)


def test_malformed_and_repeated_unknown_keys_cost_no_lookup() -> None:
    registry = CountingRegistry()
    good = random_key()
    snapshot = Snapshot(keys={hash_key(good): key_info(hash_key(good), good[:10], True, [])})
    ring = KeyRing(registry, lambda: snapshot, negative_cache=4)  # type: ignore[arg-type]

    async def attempt(key: str) -> int:
        try:
            await ring.authenticate(f"Bearer {key}")
        except OpenAIError as exc:
            return exc.status
        return 200

    async def run() -> None:
        assert await attempt(good) == 200
        assert [await attempt("tl-nope") for _ in range(100)] == [401] * 100
        unknown = random_key()
        assert [await attempt(unknown) for _ in range(100)] == [401] * 100
        assert registry.calls == 1
        # A flood of distinct random keys: lookups are bounded in concurrency, never all threads.
        statuses = await asyncio.gather(*(attempt(random_key()) for _ in range(200)))
        assert set(statuses) == {401}
        assert registry.most_at_once <= 2
        # The cache is bounded: the first unknown key was pushed out by the flood.
        assert len(ring._unknown) == 4

    asyncio.run(run())


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer  ", "tl-x"])
def test_malformed_headers_are_401(header: str) -> None:
    ring = KeyRing(CountingRegistry(), Snapshot)  # type: ignore[arg-type]
    with pytest.raises(OpenAIError) as caught:
        asyncio.run(ring.authenticate(header))
    assert caught.value.status == 401
