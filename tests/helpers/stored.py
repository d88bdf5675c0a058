"""Versions stored as they are, past `adapters import`'s checks: a full fine-tune, a malformed adapter.

Tests use them to show what the gateway and the CLI do with versions an import would never make
(stored by hand, or before the checks existed).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tuneloop.platform.artifacts import ArtifactStore, Manifest, Serving
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import Version


def store_as_is(
    registry: Registry,
    store: ArtifactStore,
    adapter: str,
    folder: Path,
    *,
    base_model: str,
    method: str,
    serving: Serving,
) -> Version:
    """Store `folder` unchecked as the next version of `adapter` and register it."""

    def put(number: int) -> str:
        manifest = Manifest(
            adapter=adapter, version=number, base_model=base_model, method=method, serving=serving,
            created_at=datetime.now(UTC),
        )  # fmt: skip
        return store.put(folder, manifest)

    return registry.add_version(
        adapter, base_model=base_model, method=method, store=put, manifest={"serving": serving}
    )
