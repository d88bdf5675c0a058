"""API keys at the gateway: who a `Bearer` key belongs to, and which adapters it may use.

Keys are checked against the follower's registry snapshot (no database round trip per request).
A key the snapshot does not know yet (created since the last poll) is looked up in the registry
once, so a freshly printed key works at once. The secret is only ever compared as its SHA-256.

Scopes: a key's scopes name aliases (or adapter names). A scope grants the adapter it names (an
alias names the adapter it points at): every alias of that adapter and every version of it,
pinned as `adapter@N` or `alias@N`. Admin keys may use everything. The base model is open to every
valid key: it is the shared foundation, and a scope exists to keep teams' adapters apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from tuneloop.platform.apikeys import hash_key
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
        if self.admin or adapter in self.scopes:
            return True
        return any(snapshot.adapter_of_alias(scope) == adapter for scope in self.scopes)


class KeyRing:
    """Turns an Authorization header into a `Principal`, or raises a 401 OpenAIError."""

    def __init__(self, registry: Registry, snapshot: Callable[[], Snapshot]) -> None:
        self._registry, self._snapshot = registry, snapshot
        self._fresh: dict[str, KeyInfo] = {}  # found in the registry since the last snapshot

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
        digest = hash_key(token)
        snapshot = self._snapshot()
        info = snapshot.keys.get(digest) or self._fresh.get(digest)
        if info is None:
            info = await asyncio.to_thread(self._lookup, digest)
        if info is None:
            raise unauthorized("Incorrect API key provided.")
        return Principal(prefix=info.prefix, admin=info.admin, scopes=info.scopes, key_id=info.key_id)

    def forget_fresh(self) -> None:
        """Called when a new snapshot arrives: it holds every key found since the last one."""
        self._fresh.clear()

    def _lookup(self, digest: str) -> KeyInfo | None:
        row = self._registry.find_api_key(digest)
        if row is None:
            return None
        info = key_info(row.key_hash, row.prefix, row.admin, list(row.scopes), row.id)
        self._fresh[digest] = info
        return info
