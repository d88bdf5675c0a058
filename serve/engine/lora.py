"""Loading and unloading adapter versions in the engine through vLLM's runtime LoRA API.

The engine-side name of a version is its registry reference, `adapter@N`: unique, stable, and what
the gateway rewrites a request's `model` to. A version is first made a local, checked copy
(engine/cache.py: safetensors only, a LoRA whose rank and target modules the engine accepts), then posted to
`/v1/load_lora_adapter` with that local path. The residency table (routing/residency.py) decides
when; this module only does it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from tuneloop.platform.adapters import check_lora_targets, lora_rank, read_adapter_config
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.errors import ArtifactError, ConfigError, TuneloopError
from tuneloop.serve.engine.cache import local_copy
from tuneloop.serve.routing.snapshot import VersionInfo

log = logging.getLogger(__name__)


class AdapterLoadError(TuneloopError):
    """A version could not be made resident; `retryable` when the engine, not the artifact, failed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class EngineLoras:
    """Makes versions resident in one engine: fetch to the local cache, check, load; and unload."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        engine_url: str,
        *,
        store: ArtifactStore,
        cache_root: Path,
        max_rank: int,
        lookup: Callable[[str], VersionInfo | None],
        target_modules: Sequence[str] | None = None,
        shared: bool = False,
    ) -> None:
        """`target_modules`: the engine's `--lora-target-modules` (None: unrestricted). `shared`: the
        engine serves several gateway workers, each with a residency table of its own, so none may
        unload what another is using: unloading leaves the version in the engine's list, whose
        weights vLLM itself keeps bounded (its LRU cache of `--max-cpu-loras`, reloaded from the
        local path on demand)."""
        self._client, self._url = client, engine_url
        self._store, self._cache_root, self._max_rank = store, cache_root, max_rank
        self._lookup, self._target_modules, self._shared = lookup, target_modules, shared

    async def local_dir(self, ref: str) -> Path:
        """The checked local copy of version `ref` (fetched on first use, in a worker thread)."""
        info = self._lookup(ref)
        if info is None:
            raise AdapterLoadError(f"{ref} is not in the registry", retryable=False)
        try:
            return await asyncio.to_thread(
                local_copy, self._store, info.adapter, info.number, self._cache_root
            )
        except TuneloopError as exc:
            raise AdapterLoadError(f"cannot fetch {ref}: {exc}", retryable=False) from None
        except OSError as exc:
            raise AdapterLoadError(f"cannot fetch {ref}: {exc}", retryable=True) from None

    async def load(self, ref: str) -> None:
        """Make `ref` resident in the engine; loading one already there is not an error."""
        path = await self.local_dir(ref)
        self._check_lora(ref, path)
        body = {"lora_name": ref, "lora_path": str(path)}
        try:
            response = await self._client.post(f"{self._url}/v1/load_lora_adapter", json=body, timeout=120)
        except httpx.HTTPError as exc:
            raise AdapterLoadError(
                f"engine unreachable while loading {ref}: {exc!r}", retryable=True
            ) from None
        if response.status_code == 200 or "already been loaded" in response.text:
            return
        raise AdapterLoadError(
            f"the engine refused {ref} ({response.status_code}): {response.text[:300]}",
            retryable=response.status_code >= 500,
        )

    async def unload(self, ref: str) -> None:
        """Remove `ref` from the engine; one it does not hold (it restarted) is already gone."""
        if self._shared:
            return
        try:
            response = await self._client.post(
                f"{self._url}/v1/unload_lora_adapter", json={"lora_name": ref}, timeout=30
            )
        except httpx.HTTPError as exc:
            log.warning("could not unload %s (engine unreachable: %r)", ref, exc)
            return
        if response.status_code not in (200, 404):
            log.warning(
                "engine refused to unload %s (%d): %s", ref, response.status_code, response.text[:300]
            )

    def _check_lora(self, ref: str, path: Path) -> None:
        try:
            config = read_adapter_config(path)
            if config.get("peft_type") != "LORA":
                raise AdapterLoadError(
                    f"{ref} is a {config.get('peft_type')} adapter, not LoRA", retryable=False
                )
            rank = lora_rank(config, "adapter_config.json")
        except ArtifactError as exc:
            raise AdapterLoadError(
                f"{ref} has a malformed adapter config: {str(exc).replace(str(path), ref)}", retryable=False
            ) from None
        if rank > self._max_rank:
            raise AdapterLoadError(
                f"{ref} has LoRA rank {rank}, above the engine's limit {self._max_rank} (derived from "
                "the registry at start: restart the replica, or set TUNELOOP_ENGINE_LORA_RANK)",
                retryable=False,
            )
        try:
            # The engine would load it and silently skip weights outside its target modules.
            check_lora_targets(path, self._target_modules)
        except (ConfigError, ArtifactError) as exc:
            raise AdapterLoadError(str(exc).replace(str(path), ref), retryable=False) from None
