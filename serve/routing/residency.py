"""Which adapter versions are loaded in the engine, who is using them, and which to unload.

Rules, in the order they matter:
- a request holds a *lease* on the version it started with until its last byte, and a version with
  leases is never unloaded, so no response switches versions halfway or loses its adapter;
- a version not resident is loaded on demand, once, however many requests want it at the same time
  (they all wait on the same load);
- past `limit` resident versions the least recently used idle one is unloaded. The limit is soft:
  when every resident version is busy, a new one is loaded anyway and the excess is unloaded as
  soon as something goes idle, because refusing or queueing the request would make it fail or hang;
- `retire` (the old version after a promotion) unloads a version as soon as its leases drain.

Everything runs on the gateway's event loop; the table is only changed between awaits, so the
fast path (a resident version) takes no lock and cannot interleave with an unload.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from tuneloop.monitoring import metrics
from tuneloop.platform.refs import adapter_name

log = logging.getLogger(__name__)


class Loader(Protocol):
    """What residency needs from the engine side (engine/lora.py's EngineLoras)."""

    async def load(self, ref: str) -> None: ...

    async def unload(self, ref: str) -> None: ...


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"


@dataclass(eq=False)
class _Entry:
    ref: str
    state: State
    task: asyncio.Task[None] | None = None
    leases: int = 0
    waiters: int = 0
    last_used: int = 0
    retiring: bool = False


class Lease:
    """A request's hold on one resident version; `release()` once, when the response is done."""

    def __init__(self, residency: Residency, entry: _Entry) -> None:
        self._residency, self._entry, self._released = residency, entry, False
        self.ref = entry.ref

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._residency._release(self._entry)


class Residency:
    """The residency table of one engine (see the module docstring)."""

    def __init__(self, loader: Loader, limit: int, *, protected: Callable[[str], bool] = lambda _ref: False):
        self._loader, self.limit, self._protected = loader, max(1, limit), protected
        self._entries: dict[str, _Entry] = {}
        self._clock = itertools.count(1)

    # -- what requests and the follower call
    async def acquire(self, ref: str) -> Lease:
        """A lease on `ref`, loading it first if needed; raises what the load raised."""
        while True:
            entry = self._entries.get(ref)
            if entry is not None and entry.state is State.READY:
                entry.leases += 1
                entry.retiring = False
                entry.last_used = next(self._clock)
                return Lease(self, entry)
            if entry is None:
                entry = self._start_load(ref)
            assert entry.task is not None
            loading = entry.state is State.LOADING
            entry.waiters += 1
            try:
                # shield: a client that goes away must not cancel a load other requests wait for.
                await asyncio.shield(entry.task)
            except Exception:
                if loading:
                    raise  # the load failed: every request waiting for it gets the reason
            finally:
                entry.waiters -= 1
            # Loaded: the fast path takes it next turn. Was being unloaded: it is loaded again.

    async def preload(self, ref: str) -> None:
        """Make `ref` resident without using it (a promotion loads the new version before switching)."""
        (await self.acquire(ref)).release()

    def retire(self, ref: str) -> None:
        """Unload `ref` once nothing uses it (immediately if idle)."""
        entry = self._entries.get(ref)
        if entry is None or entry.state is not State.READY:
            return
        entry.retiring = True
        if entry.leases == 0 and entry.waiters == 0:
            self._start_unload(entry, "retired")

    async def reload_all(self) -> list[str]:
        """After an engine restart: load every version we had again; returns the ones that failed."""
        entries = [e for e in self._entries.values() if e.state is State.READY]
        for entry in entries:
            entry.state = State.LOADING
            entry.task = _task(self._load(entry))
        results = await asyncio.gather(*(e.task for e in entries if e.task), return_exceptions=True)
        return [e.ref for e, r in zip(entries, results, strict=True) if isinstance(r, BaseException)]

    def resident(self) -> list[str]:
        """Resident versions, least recently used first."""
        ready = [e for e in self._entries.values() if e.state is State.READY]
        return [e.ref for e in sorted(ready, key=lambda e: e.last_used)]

    def leases(self, ref: str) -> int:
        entry = self._entries.get(ref)
        return entry.leases if entry else 0

    # -- internals
    def _start_load(self, ref: str) -> _Entry:
        entry = _Entry(ref=ref, state=State.LOADING, last_used=next(self._clock))
        self._entries[ref] = entry
        entry.task = _task(self._load(entry))
        return entry

    async def _load(self, entry: _Entry) -> None:
        adapter = adapter_name(entry.ref)
        started = time.monotonic()
        try:
            await self._loader.load(entry.ref)
        except BaseException:
            metrics.ADAPTER_LOADS.labels(adapter, "error").inc()
            if self._entries.get(entry.ref) is entry:
                del self._entries[entry.ref]
            self._update_gauge()
            raise
        metrics.ADAPTER_LOADS.labels(adapter, "ok").inc()
        metrics.ADAPTER_LOAD_SECONDS.labels(adapter).observe(time.monotonic() - started)
        entry.state = State.READY
        entry.last_used = next(self._clock)
        log.info("loaded %s in %.3f s", entry.ref, time.monotonic() - started)
        self._update_gauge()
        self._evict_excess(keep=entry)

    def _release(self, entry: _Entry) -> None:
        entry.leases -= 1
        if entry.leases == 0 and entry.waiters == 0 and entry.state is State.READY:
            if entry.retiring:
                self._start_unload(entry, "retired")
            else:
                self._evict_excess()

    def _evict_excess(self, keep: _Entry | None = None) -> None:
        ready = [e for e in self._entries.values() if e.state is State.READY]
        excess = len(ready) - self.limit
        if excess <= 0:
            return
        idle = [e for e in ready if e.leases == 0 and e.waiters == 0 and e is not keep]
        # Versions an alias serves go last: unloading them only to load them again is churn.
        idle.sort(key=lambda e: (self._protected(e.ref), e.last_used))
        for entry in idle[:excess]:
            self._start_unload(entry, "evicted")

    def _start_unload(self, entry: _Entry, reason: str) -> None:
        entry.state = State.UNLOADING
        entry.task = _task(self._unload(entry, reason))

    async def _unload(self, entry: _Entry, reason: str) -> None:
        try:
            await self._loader.unload(entry.ref)
            metrics.ADAPTER_UNLOADS.labels(adapter_name(entry.ref), reason).inc()
            log.info("unloaded %s (%s)", entry.ref, reason)
        except Exception:
            log.exception("unloading %s failed; forgetting it anyway", entry.ref)
        finally:
            if self._entries.get(entry.ref) is entry:
                del self._entries[entry.ref]
            self._update_gauge()

    def _update_gauge(self) -> None:
        metrics.ADAPTERS_RESIDENT.set(sum(1 for e in self._entries.values() if e.state is State.READY))


def _task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task whose failure counts as seen even if every request that waited for it went away."""
    task = asyncio.create_task(coro)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task
