"""An immutable picture of what the registry says: versions, aliases and API keys.

The gateway never queries the registry while answering a request: the follower (follower.py) loads
a `Snapshot` whenever the registry's newest event id moves and swaps it in whole, so every request
sees one consistent picture and the event loop never waits on the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tuneloop.platform.artifacts import ArtifactStore, Serving
from tuneloop.platform.promotion import serving_of
from tuneloop.platform.refs import adapter_name
from tuneloop.platform.registry import Registry, finetuning


@dataclass(frozen=True)
class VersionInfo:
    """One stored version, as routing needs it."""

    ref: str
    """`adapter@N`: the registry reference and the engine-side name."""
    adapter: str
    number: int
    method: str
    serving: Serving
    base_model: str
    status: str = "live"
    """The registry's status: `candidate` versions are served to admin keys only (the gate
    evaluates them that way), `rejected` ones to nobody; `live` and `retired` to the adapter's keys."""


@dataclass(frozen=True)
class KeyInfo:
    """One API key: the hash the client's key must match, and what it grants."""

    key_hash: str
    prefix: str
    admin: bool
    scopes: frozenset[str]
    key_id: int | None = None
    """The registry's id of the key (`api_keys.id`): what capture records, never the secret."""


@dataclass(frozen=True)
class Snapshot:
    """Versions by reference, aliases (name -> reference, as in the registry), keys by hash."""

    event_id: int = -1
    versions: Mapping[str, VersionInfo] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    keys: Mapping[str, KeyInfo] = field(default_factory=dict)
    owners: Mapping[str, int] = field(default_factory=dict)
    """Adapter name -> id of the key that fine-tuned it through /v1/fine_tuning/jobs."""

    def adapter_of_alias(self, alias: str) -> str | None:
        ref = self.aliases.get(alias)
        return adapter_name(ref) if ref else None

    def version(self, adapter: str, number: int) -> VersionInfo | None:
        return self.versions.get(f"{adapter}@{number}")


def key_info(
    key_hash: str, prefix: str, admin: bool, scopes: list[str], key_id: int | None = None
) -> KeyInfo:
    return KeyInfo(key_hash=key_hash, prefix=prefix, admin=admin, scopes=frozenset(scopes), key_id=key_id)


def load_snapshot(registry: Registry, store: ArtifactStore, serving_cache: dict[str, Serving]) -> Snapshot:
    """Read everything routing needs (blocking: call it in a worker thread).

    `serving_cache` keeps how each version is served between loads: versions are immutable, and a
    row without it in its manifest costs a read from the artifact store.
    """
    event_id = registry.last_event_id()
    versions = {}
    for row in registry.list_versions():
        if row.ref not in serving_cache:
            serving_cache[row.ref] = serving_of(row, store)
        versions[row.ref] = VersionInfo(
            ref=row.ref,
            adapter=row.adapter.name,
            number=row.number,
            method=row.method,
            serving=serving_cache[row.ref],
            base_model=row.adapter.base_model,
            status=str(row.status),
        )
    keys = {
        k.key_hash: key_info(k.key_hash, k.prefix, k.admin, list(k.scopes), k.id) for k in registry.api_keys()
    }
    return Snapshot(
        event_id=event_id,
        versions=versions,
        aliases=registry.aliases(),
        keys=keys,
        owners=finetuning.owners(registry),
    )
