"""API keys at the gateway: who a `Bearer` key belongs to, and which adapters it may use.

Keys are checked against the follower's registry snapshot (no database round trip per request).
A key the snapshot does not know yet (created since the last poll) is looked up in the registry
once, so a freshly printed key works at once. The secret is only ever compared as its SHA-256.

Bad keys must stay cheap, or a flood of them would starve the worker threads the registry follower
and key revocation need: a key not shaped like ours (`tl-` + 43 URL-safe characters) is refused
before it is even hashed; an unknown well-formed key is remembered (a bounded LRU of hashes, cleared
whenever a new snapshot arrives) so it costs one registry lookup at most; and at most
TUNELOOP_AUTH_LOOKUPS lookups run at once, the others waiting on the event loop, not in threads.

Scopes: a key's scopes name aliases (or adapter names). A scope grants the adapter it names (an
alias names the adapter it points at): every alias of that adapter and every version of it,
pinned as `adapter@N` or `alias@N`. Admin keys may use everything. A key also owns the adapters it
fine-tuned through /v1/fine_tuning/jobs, candidates included. The base model is open to every
valid key: it is the shared foundation, and a scope exists to keep teams' adapters apart.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tuneloop.platform.apikeys import hash_key, well_formed
from tuneloop.platform.registry import Registry
from tuneloop.serve.errors import unauthorized
from tuneloop.serve.routing.snapshot import KeyInfo, Snapshot, key_info


@dataclass(frozen=True)
class Principal:
    """The caller behind a valid key."""

    prefix: str
    admin: bool
    scopes: frozenset[str]
    key_id: int | None = None
    """The registry's id of the key, recorded with captured requests and feedback (never the secret)."""

    def may_use(self, adapter: str, snapshot: Snapshot) -> bool:
        """Whether this key may call versions and aliases of `adapter`."""
        if self.admin or adapter in self.scopes or self.owns(adapter, snapshot):
            return True
        return any(snapshot.adapter_of_alias(scope) == adapter for scope in self.scopes)

    def owns(self, adapter: str, snapshot: Snapshot) -> bool:
        """Whether this key fine-tuned `adapter` through the API (it may call its candidates too)."""
        return self.key_id is not None and snapshot.owners.get(adapter) == self.key_id


class KeyRing:
    """Turns an Authorization header into a `Principal`, or raises a 401 OpenAIError."""

    def __init__(
        self,
        registry: Registry,
        snapshot: Callable[[], Snapshot],
        *,
        negative_cache: int = 10_000,
        concurrent_lookups: int = 2,
    ) -> None:
        self._registry, self._snapshot = registry, snapshot
        self._fresh: dict[str, KeyInfo] = {}  # found in the registry since the last snapshot
        self._unknown: OrderedDict[str, None] = OrderedDict()  # not found since the last snapshot
        self._max_unknown = negative_cache
        self._lookups = asyncio.Semaphore(concurrent_lookups)
        self.lookups = 0
        """Registry lookups made so far (tests check that bad keys stay cheap)."""

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise unauthorized(
                "Missing API key: send `Authorization: Bearer <key>` "
                "(create one with `tuneloop keys create`).",
                code="missing_api_key",
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Malformed Authorization header: expected `Bearer <key>`.")
        if not well_formed(token):
            raise unauthorized("Incorrect API key provided.")
        digest = hash_key(token)
        info = self._known(digest)
        if info is None and digest not in self._unknown:
            async with self._lookups:
                info = self._known(digest)  # another request may have looked it up meanwhile
                if info is None and digest not in self._unknown:
                    self.lookups += 1
                    info = await asyncio.to_thread(self._lookup, digest)
        if info is None:
            self._remember_unknown(digest)
            raise unauthorized("Incorrect API key provided.")
        return Principal(prefix=info.prefix, admin=info.admin, scopes=info.scopes, key_id=info.key_id)

    def forget_fresh(self) -> None:
        """Called when a new snapshot arrives: it holds every key found (or created) since the last one."""
        self._fresh.clear()
        self._unknown.clear()

    def _known(self, digest: str) -> KeyInfo | None:
        return self._snapshot().keys.get(digest) or self._fresh.get(digest)

    def _remember_unknown(self, digest: str) -> None:
        self._unknown[digest] = None
        self._unknown.move_to_end(digest)
        while len(self._unknown) > self._max_unknown:
            self._unknown.popitem(last=False)

    def _lookup(self, digest: str) -> KeyInfo | None:
        row = self._registry.find_api_key(digest)
        if row is None:
            return None
        info = key_info(row.key_hash, row.prefix, row.admin, list(row.scopes), row.id)
        self._fresh[digest] = info
        return info
