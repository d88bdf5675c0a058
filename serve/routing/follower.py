"""The gateway follows the registry: promotions and rollbacks become alias switches, load first.

Every `interval` seconds (TUNELOOP_REGISTRY_POLL_S, 0.5 s by default) the follower reads one number,
the registry's newest event id; only when it moved does it load a new snapshot. Then, for every
alias whose registry version differs from the version it is switched to here:

1. a version this replica cannot serve is refused (logged, kept in `refusals`) and the alias keeps
   serving what it served; an alias with nothing servable answers the refusal;
2. otherwise the version is made ready (a LoRA loaded into the engine, a prompt-tuned version's
   embeddings loaded) and only then is the alias switched, so no request ever waits for, or fails
   on, a half-loaded adapter;
3. the version it pointed at before is retired: unloaded once the requests that started on it
   have finished (residency.py's leases).

A rollback is the same operation with the versions the other way round. A failed load is retried
with backoff at later polls while the alias keeps its old version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from tuneloop.monitoring import metrics
from tuneloop.platform.artifacts import ArtifactStore, Serving
from tuneloop.platform.registry import Registry
from tuneloop.serve.errors import OpenAIError
from tuneloop.serve.routing.residency import Residency
from tuneloop.serve.routing.snapshot import Snapshot, VersionInfo, load_snapshot

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class RegistryFollower:
    """Keeps `snapshot` and the switched aliases (`live`) in step with the registry."""

    def __init__(
        self,
        registry: Registry,
        store: ArtifactStore,
        residency: Residency,
        *,
        interval: float,
        refusal: Callable[[VersionInfo], OpenAIError | None],
        prepare: Callable[[str], Awaitable[None]],
        engine_ready: Callable[[], bool],
        on_snapshot: Callable[[], None] = lambda: None,
    ) -> None:
        """`prepare(ref)` makes a version ready to serve (loads a LoRA, warms prompt embeddings)."""
        self._registry, self._store, self._residency = registry, store, residency
        self.interval = interval
        self._refusal, self._prepare, self._engine_ready = refusal, prepare, engine_ready
        self._on_snapshot = on_snapshot
        self.snapshot = Snapshot()
        self.live: dict[str, str] = {}
        self.refusals: dict[str, OpenAIError] = {}
        self.synced = asyncio.Event()
        self._serving_cache: dict[str, Serving] = {}
        self._retry_at: dict[tuple[str, str], tuple[float, float]] = {}  # (alias, ref) -> (when, backoff)

    async def run(self) -> None:
        """Poll forever (a background task of the gateway); errors are logged and retried."""
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the registry failed; retrying in %.1f s", self.interval)
            await asyncio.sleep(self.interval)

    async def poll_once(self) -> None:
        event_id = await asyncio.to_thread(self._registry.last_event_id)
        if event_id != self.snapshot.event_id:
            self.snapshot = await asyncio.to_thread(
                load_snapshot, self._registry, self._store, self._serving_cache
            )
            self._on_snapshot()
        first = not self.synced.is_set()
        await self._sync_aliases(first=first)
        self.synced.set()

    async def refresh(self) -> None:
        """Load a new snapshot now, not at the next poll: a fine-tuning job just published a version
        that its key is about to call."""
        self.snapshot = await asyncio.to_thread(
            load_snapshot, self._registry, self._store, self._serving_cache
        )
        self._on_snapshot()

    def is_live(self, ref: str) -> bool:
        """Whether some alias is switched to `ref` (residency unloads those last)."""
        return ref in self.live.values()

    async def _sync_aliases(self, *, first: bool) -> None:
        snapshot = self.snapshot
        for alias in [a for a in self.live if a not in snapshot.aliases]:
            self._retire(self.live.pop(alias))
        pending = []
        for alias, ref in snapshot.aliases.items():
            if self.live.get(alias) == ref:
                self.refusals.pop(alias, None)
                continue
            info = snapshot.versions.get(ref)
            refusal = self._refusal(info) if info else OpenAIError(404, f"{ref} is not in the registry")
            if refusal is not None:
                if alias not in self.refusals:
                    kept = f"; it keeps serving {self.live[alias]}" if alias in self.live else ""
                    log.error("alias %s -> %s refused: %s%s", alias, ref, refusal.message, kept)
                self.refusals[alias] = refusal
                continue
            self.refusals.pop(alias, None)
            if first:
                # Starting up: nothing was served before, so switch now and load on first use
                # (the supervisor preloads alias targets once the engine is up).
                self.live[alias] = ref
                continue
            pending.append(self._switch(alias, ref))
        await asyncio.gather(*pending)

    async def _switch(self, alias: str, ref: str) -> None:
        if not self._engine_ready():
            return  # requests get 503 meanwhile; switch once the engine is back
        when, backoff = self._retry_at.get((alias, ref), (0.0, 0.0))
        if time.monotonic() < when:
            return
        started = time.monotonic()
        try:
            await self._prepare(ref)
        except Exception as exc:
            backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
            self._retry_at[(alias, ref)] = (time.monotonic() + backoff, backoff)
            log.error("alias %s -> %s: load failed, retry in %.0f s: %s", alias, ref, backoff, exc)
            return
        self._retry_at.pop((alias, ref), None)
        old = self.live.get(alias)
        self.live[alias] = ref
        metrics.ALIAS_SWITCHES.labels(alias).inc()
        log.info("alias %s -> %s (was %s), loaded in %.3f s", alias, ref, old, time.monotonic() - started)
        if old is not None:
            self._retire(old)

    def _retire(self, ref: str) -> None:
        if not self.is_live(ref):
            self._residency.retire(ref)
