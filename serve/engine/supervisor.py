"""The gateway's vLLM engine: started, watched, restarted when it dies, its adapters reloaded.

The engine runs as a subprocess in its own process group (engine/launch.py via platform/procs.py),
on loopback, on its own port, with an API key only the gateway holds: clients only ever reach it
through the gateway. Its group is led by a guard (engine/guard.py) that stops it when the gateway
process dies however it dies, and its pid file (engine/pidfile.py) lets a later replica tell an
engine left behind from anything else. The supervisor:

- starts it and waits for `/health` in a worker thread (the event loop keeps answering 503s);
- watches it: the process exiting is noticed within `poll_s`; `/health` failing `max_failures`
  times in a row (a hung engine) gets it killed and restarted too;
- on every (re)start, runs `on_up` (reload the resident adapters) before it reports UP, so a
  request never reaches an engine that lacks the adapter it was promised;
- backs off (1 s doubling to 30 s) when the engine dies again soon after starting.

While the state is not UP, requests are answered 503 with Retry-After at once (api side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path

import httpx

from tuneloop.monitoring import metrics
from tuneloop.platform.procs import ManagedProcess, ProcessStartError
from tuneloop.serve.engine.launch import EngineConfig, engine_healthy, engine_process
from tuneloop.serve.engine.pidfile import forget_engine, record_engine

log = logging.getLogger(__name__)


class EngineState(StrEnum):
    STARTING = "starting"
    RELOADING = "reloading adapters"
    UP = "up"
    DOWN = "down"
    STOPPED = "stopped"


class EngineSupervisor:
    """Owns the engine process for the gateway's lifetime (see the module docstring)."""

    def __init__(
        self,
        config: EngineConfig,
        log_dir: Path,
        client: httpx.AsyncClient,
        *,
        on_up: Callable[[], Awaitable[None]],
        on_fatal: Callable[[str], None] = lambda _message: None,
        ready_timeout: float = 300.0,
        poll_s: float = 0.25,
        health_every_s: float = 2.0,
        max_failures: int = 3,
        pid_file: Path | None = None,
    ) -> None:
        self.config, self._log_dir, self._client = config, log_dir, client
        self._on_up, self._on_fatal, self._ready_timeout = on_up, on_fatal, ready_timeout
        self._poll_s, self._health_every_s, self._max_failures = poll_s, health_every_s, max_failures
        self.state = EngineState.STARTING
        self.process: ManagedProcess | None = None
        self.restarts = 0
        self.last_error = ""
        self.ever_up = asyncio.Event()
        self._pid_file = pid_file

    @property
    def up(self) -> bool:
        return self.state is EngineState.UP

    async def run(self) -> None:
        """Start the engine and keep it running until cancelled (then `stop()` it)."""
        backoff = 0.0
        while True:
            started = time.monotonic()
            if await self._start():
                await self._watch()
                self.restarts += 1
                metrics.ENGINE_RESTARTS.inc()
            elif not self.ever_up.is_set():
                # It never came up: a wrong model or flag, not a crash; retrying would not help.
                self._on_fatal(self.last_error)
                return
            # Died young: wait longer each time, so a broken engine does not spin the CPU.
            backoff = 0.0 if time.monotonic() - started > 60 else min(30.0, max(1.0, backoff * 2))
            log.warning("engine down (%s); restarting in %.0f s", self.last_error, backoff)
            await asyncio.sleep(backoff)

    async def stop(self) -> None:
        """Stop the engine's whole process group (SIGTERM, then SIGKILL)."""
        self._set(EngineState.STOPPED)
        if self.process is not None:
            await asyncio.to_thread(self.process.stop, 10.0)
            self._forget()

    async def probe(self, timeout: float = 1.0) -> bool:
        """Whether the engine answers /health right now."""
        return await engine_healthy(self._client, self.config, timeout)

    async def _start(self) -> bool:
        self._set(EngineState.STARTING)
        if self.process is not None:  # whatever is left of the previous engine's group
            await asyncio.to_thread(self.process.stop, 5.0)
            self._forget()
        self.process = engine_process(
            self.config, self._log_dir, ready_timeout=self._ready_timeout, guarded=True
        )
        try:
            await asyncio.to_thread(self.process.start)
            if self._pid_file is not None:
                record_engine(self._pid_file, self.process.pid, self.config.port)
            seconds = await asyncio.to_thread(self.process.wait_healthy)
        except ProcessStartError as exc:
            self.last_error = str(exc).splitlines()[0]
            log.error("engine failed to start: %s", exc)
            self._set(EngineState.DOWN)
            return False
        log.info("engine (pid %d) answers after %.1f s; reloading adapters", self.process.pid, seconds)
        self._set(EngineState.RELOADING)
        try:
            await self._on_up()
        except Exception:
            log.exception("reloading adapters after the engine started failed; they load on demand")
        self._set(EngineState.UP)
        self.ever_up.set()
        return True

    async def _watch(self) -> None:
        assert self.process is not None
        failures, next_check = 0, time.monotonic() + self._health_every_s
        reason = "exited"
        while self.process.alive():
            await asyncio.sleep(self._poll_s)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self._health_every_s
                failures = 0 if await self.probe(timeout=5.0) else failures + 1
                if failures >= self._max_failures:
                    reason = f"did not answer /health {failures} times in a row"
                    break
        self._set(EngineState.DOWN)
        code = await asyncio.to_thread(self.process.stop, 5.0)
        self.last_error = f"engine (pid {self.process.pid}) {reason}, exit code {code}"
        log.error("%s; its log ends:\n%s", self.last_error, self.process.log_tail(15))

    def _forget(self) -> None:
        """Drop the pid file once its engine is gone (it names a live engine only)."""
        if self._pid_file is None or self.process is None or self.process.alive():
            return
        with contextlib.suppress(ProcessStartError):  # never started: nothing was recorded
            forget_engine(self._pid_file, self.process.pid)

    def _set(self, state: EngineState) -> None:
        self.state = state
        metrics.ENGINE_UP.set(1 if state is EngineState.UP else 0)
