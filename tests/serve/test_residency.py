"""The residency table's rules, against a recording fake engine (no vLLM: these are about ordering).

Leases pin a version; one load serves every concurrent request; the least recently used idle
version goes first past the limit (alias targets last); retired versions leave once drained; a
restart reloads what was resident; a failed load reaches every waiter and leaves no entry behind.
"""

from __future__ import annotations

import asyncio

import pytest

from tuneloop.serve.routing.residency import Residency


class FakeEngine:
    def __init__(self, *, delay: float = 0.0, fail: set[str] | None = None) -> None:
        self.loaded: set[str] = set()
        self.calls: list[str] = []
        self.delay, self.fail = delay, fail or set()

    async def load(self, ref: str) -> None:
        self.calls.append(f"load {ref}")
        await asyncio.sleep(self.delay)
        if ref in self.fail:
            raise RuntimeError(f"cannot load {ref}")
        self.loaded.add(ref)

    async def unload(self, ref: str) -> None:
        self.calls.append(f"unload {ref}")
        await asyncio.sleep(0)
        self.loaded.discard(ref)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_concurrent_requests_share_one_load() -> None:
    async def scenario() -> None:
        engine = FakeEngine(delay=0.05)
        residency = Residency(engine, limit=4)
        leases = await asyncio.gather(*(residency.acquire("a@1") for _ in range(8)))
        assert engine.calls == ["load a@1"] and residency.leases("a@1") == 8
        for lease in leases:
            lease.release()
            lease.release()  # twice is harmless
        assert residency.leases("a@1") == 0 and residency.resident() == ["a@1"]

    asyncio.run(scenario())


def test_least_recently_used_idle_version_is_evicted_never_a_busy_one() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        protected = {"alias@1"}
        residency = Residency(engine, limit=3, protected=lambda ref: ref in protected)
        busy = await residency.acquire("busy@1")  # oldest, but in use
        for ref in ("alias@1", "idle@1"):
            await residency.preload(ref)
        await residency.preload("new@1")  # 4 > 3: idle@1 goes (busy is leased, alias@1 protected)
        await settle()
        assert engine.loaded == {"busy@1", "alias@1", "new@1"}
        await residency.preload("newer@1")  # new@1 goes before the older alias@1: aliases last
        await settle()
        assert engine.loaded == {"busy@1", "alias@1", "newer@1"}
        protected.clear()
        await residency.preload("newest@1")  # no alias now: plain LRU among the idle ones
        await settle()
        assert engine.loaded == {"busy@1", "newer@1", "newest@1"}
        busy.release()
        await settle()
        assert "busy@1" in engine.loaded  # at the limit again: nothing more to evict

    asyncio.run(scenario())


def test_limit_is_soft_when_everything_is_busy() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        residency = Residency(engine, limit=1)
        first = await residency.acquire("a@1")
        second = await residency.acquire("b@1")  # loaded although over the limit: never refuse
        await settle()
        assert engine.loaded == {"a@1", "b@1"}
        first.release()
        await settle()
        assert engine.loaded == {"b@1"}  # the excess goes as soon as something is idle
        second.release()

    asyncio.run(scenario())


def test_retired_version_is_unloaded_after_its_requests_drain() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        residency = Residency(engine, limit=8)
        lease = await residency.acquire("old@1")
        residency.retire("old@1")
        await settle()
        assert "old@1" in engine.loaded  # a request is still streaming from it
        lease.release()
        await settle()
        assert "old@1" not in engine.loaded and residency.resident() == []
        # A request for it later simply loads it again.
        (await residency.acquire("old@1")).release()
        assert engine.calls == ["load old@1", "unload old@1", "load old@1"]

    asyncio.run(scenario())


def test_request_arriving_during_an_unload_gets_a_fresh_load() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        residency = Residency(engine, limit=8)
        await residency.preload("v@1")
        residency.retire("v@1")  # idle: unloading starts now
        lease = await residency.acquire("v@1")
        assert engine.loaded == {"v@1"} and engine.calls == ["load v@1", "unload v@1", "load v@1"]
        lease.release()

    asyncio.run(scenario())


def test_failed_load_reaches_every_waiter_and_leaves_nothing() -> None:
    async def scenario() -> None:
        engine = FakeEngine(delay=0.01, fail={"bad@1"})
        residency = Residency(engine, limit=4)
        results = await asyncio.gather(
            *(residency.acquire("bad@1") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        assert engine.calls == ["load bad@1"] and residency.resident() == []
        engine.fail.clear()
        (await residency.acquire("bad@1")).release()  # a later request tries again
        assert residency.resident() == ["bad@1"]

    asyncio.run(scenario())


def test_reload_all_after_an_engine_restart() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        residency = Residency(engine, limit=4)
        for ref in ("a@1", "b@1"):
            await residency.preload(ref)
        engine.loaded.clear()  # the engine died and came back empty
        engine.fail = {"b@1"}
        assert await residency.reload_all() == ["b@1"]
        assert engine.loaded == {"a@1"} and residency.resident() == ["a@1"]

    asyncio.run(scenario())


def test_a_client_leaving_does_not_cancel_a_shared_load() -> None:
    async def scenario() -> None:
        engine = FakeEngine(delay=0.05)
        residency = Residency(engine, limit=4)
        impatient = asyncio.create_task(residency.acquire("a@1"))
        patient = asyncio.create_task(residency.acquire("a@1"))
        await asyncio.sleep(0.01)
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        (await patient).release()
        assert engine.calls == ["load a@1"] and residency.resident() == ["a@1"]

    asyncio.run(scenario())
