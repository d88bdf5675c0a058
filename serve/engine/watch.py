"""A gateway worker's view of an engine another process supervises (`tuneloop serve --workers N`).

With several workers, the replica's parent process starts the one engine (engine/supervisor.py)
and the workers only use it. Each worker watches it here, with the supervisor's interface
(`up`, `state`, `probe`, `run`, `stop`): `/health` every `poll_s`; the first answer after a
silence runs `on_up` (reload this worker's resident adapters, preload its alias targets) before
the worker reports UP, so an engine restarted by the parent gets back every adapter the workers
had promised, as a single-process replica's does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx

from tuneloop.monitoring import metrics
from tuneloop.serve.engine.launch import EngineConfig, engine_healthy
from tuneloop.serve.engine.supervisor import EngineState

log = logging.getLogger(__name__)


class EngineWatch:
    """Follows an engine this process does not own (see the module docstring)."""

    def __init__(
        self,
        config: EngineConfig,
        client: httpx.AsyncClient,
        *,
        on_up: Callable[[], Awaitable[None]],
        poll_s: float = 0.25,
        up_poll_s: float | None = None,
        max_failures: int = 2,
    ) -> None:
        """`up_poll_s`: the interval once the engine is up, if not `poll_s` (a gateway inside the
        engine, serve/hosted.py, cannot outlive it: it only needs to see it answer)."""
        self.config, self._client, self._on_up = config, client, on_up
        self._poll_s, self._max_failures = poll_s, max_failures
        self._up_poll_s = poll_s if up_poll_s is None else up_poll_s
        self.state = EngineState.STARTING
        self.ever_up = asyncio.Event()
        self.restarts = 0

    @property
    def up(self) -> bool:
        return self.state is EngineState.UP

    async def probe(self, timeout: float = 1.0) -> bool:
        """Whether the engine answers /health right now."""
        return await engine_healthy(self._client, self.config, timeout)

    async def run(self) -> None:
        """Watch until cancelled: DOWN after `max_failures` silent probes, UP after `on_up` ran."""
        failures = 0
        while True:
            if await self.probe(timeout=5.0 if self.up else 1.0):
                failures = 0
                if not self.up:
                    await self._came_up()
            else:
                failures += 1
                if self.up and failures >= self._max_failures:
                    log.warning("the engine stopped answering; requests get 503 until it is back")
                    self._set(EngineState.DOWN)
            await asyncio.sleep(self._up_poll_s if self.up else self._poll_s)

    async def stop(self) -> None:
        """The engine is the parent's to stop; this worker only stops using it."""
        self._set(EngineState.STOPPED)

    async def _came_up(self) -> None:
        if self.ever_up.is_set():
            self.restarts += 1
        self._set(EngineState.RELOADING)
        try:
            await self._on_up()
        except Exception:
            log.exception("reloading adapters after the engine came up failed; they load on demand")
        self._set(EngineState.UP)
        self.ever_up.set()

    def _set(self, state: EngineState) -> None:
        self.state = state
        metrics.ENGINE_UP.set(1 if state is EngineState.UP else 0)
