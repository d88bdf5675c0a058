"""One serving replica: the parts of the gateway wired together, started and stopped as one.

    request -> auth (KeyRing) -> Resolver (snapshot + switched aliases) -> admission (in-flight cap)
            -> Residency lease (load on demand) | prompt embeddings -> proxy -> engine (EngineSupervisor's
            process); on close -> Capture (sampled record, written off the request path)
    RegistryFollower (poll) -> snapshot, prepare (load / warm), switch aliases, retire old versions

The registry and artifact store are synchronous (SQLAlchemy, fsspec); the replica only ever calls
them from worker threads, so the event loop that streams tokens never blocks on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import httpx
from starlette.types import ASGIApp

from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.registry import Registry
from tuneloop.serve.auth.keys import KeyRing
from tuneloop.serve.config import GatewayConfig
from tuneloop.serve.engine.inprocess import InProcessSession
from tuneloop.serve.engine.lora import EngineLoras
from tuneloop.serve.engine.pidfile import pid_file
from tuneloop.serve.engine.supervisor import EngineSupervisor
from tuneloop.serve.engine.watch import EngineWatch
from tuneloop.serve.errors import engine_unavailable, hide_internal, too_many_requests
from tuneloop.serve.request.capture import Capture
from tuneloop.serve.request.hooks import prepare_hook
from tuneloop.serve.request.proxy import engine_session
from tuneloop.serve.routing.follower import RegistryFollower
from tuneloop.serve.routing.residency import Residency
from tuneloop.serve.routing.resolver import Resolver

log = logging.getLogger(__name__)


class Replica:
    """The gateway's state; `app.state.replica` (see app.py)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        on_fatal: Callable[[str], None] = lambda _m: None,
        engine_app: tuple[ASGIApp, Mapping[str, Any]] | None = None,
    ) -> None:
        """`engine_app`: vLLM's app and the scope fields its calls share, when this gateway runs
        inside the engine's server (serve/hosted.py); completions then call it in-process."""
        if not config.engine.api_key:  # a fresh key per replica, known to this process only
            engine = dataclasses.replace(config.engine, api_key=secrets.token_urlsafe(32))
            config = dataclasses.replace(config, engine=engine)
        self.config = config
        hide_internal(
            str(config.cache_dir),
            str(config.log_dir.parent),  # TUNELOOP_HOME
            config.artifacts,
            config.db_url,
            str(config.run_dir or ""),
            *((config.base.engine,) if config.base.engine != config.base.public else ()),
        )
        self.fatal: str | None = None
        self._on_fatal = on_fatal
        # httpx for the control calls (health, adapter loads, metrics); completions go through
        # `session` (aiohttp, made in start() on the event loop): see serve/request/proxy.py for why.
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            headers=config.engine.headers(),
        )
        self._session: aiohttp.ClientSession | InProcessSession | None = None
        self._engine_app = engine_app
        self.engine_url = config.engine.url
        self.registry = Registry(config.db_url)
        self.store = ArtifactStore(config.artifacts)
        self.resolver = Resolver(config.base, prompt_embeds=config.prompt_embeds)
        self.capture = Capture(config.capture)
        self.loras = EngineLoras(
            self.client,
            self.engine_url,
            store=self.store,
            cache_root=config.cache_dir / "adapters",
            max_rank=config.engine.max_lora_rank,
            lookup=lambda ref: self.follower.snapshot.versions.get(ref),
            target_modules=config.lora_target_modules,
            shared=config.engine_owner is not None,
        )
        self.residency = Residency(
            self.loras, config.max_resident, protected=lambda ref: self.follower.is_live(ref)
        )
        self.supervisor: EngineSupervisor | EngineWatch
        if config.engine_owner is not None:  # a worker: the parent process runs the engine
            # Inside the engine (serve/hosted.py) each probe is a request to this very server.
            up_poll_s = 5.0 if engine_app is not None else None
            self.supervisor = EngineWatch(
                config.engine, self.client, on_up=self._engine_up, up_poll_s=up_poll_s
            )
        else:
            self.supervisor = EngineSupervisor(
                config.engine,
                config.log_dir,
                self.client,
                on_up=self._engine_up,
                on_fatal=self._fatal,
                ready_timeout=config.engine_start_timeout,
                pid_file=pid_file(config.run_dir, config.engine.port) if config.run_dir else None,
            )
        self.follower = RegistryFollower(
            self.registry,
            self.store,
            self.residency,
            interval=config.poll_interval,
            refusal=self.resolver.refusal,
            prepare=self.prepare,
            engine_ready=lambda: self.supervisor.up,
            on_snapshot=lambda: self.keys.forget_fresh(),
        )
        self.keys = KeyRing(
            self.registry,
            lambda: self.follower.snapshot,
            negative_cache=config.auth_negative_cache,
            concurrent_lookups=config.auth_lookups,
        )
        self.in_flight = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def session(self) -> aiohttp.ClientSession | InProcessSession:
        """The HTTP session completions are proxied with (exists once the replica started)."""
        assert self._session is not None, "Replica.start() makes the session"
        return self._session

    async def start(self) -> None:
        """Start following the registry and the engine (both in the background)."""
        headers = self.config.engine.headers()
        if self._engine_app is not None:
            self._session = InProcessSession(*self._engine_app, headers=headers)
        else:
            self._session = engine_session(headers)
        if self.config.metrics_public:
            log.warning(
                "TUNELOOP_METRICS_PUBLIC is on: /metrics names every alias to anyone who can reach it"
            )
        self._tasks = [
            asyncio.create_task(self.follower.run(), name="registry-follower"),
            asyncio.create_task(self.supervisor.run(), name="engine-supervisor"),
        ]
        if isinstance(self.supervisor, EngineWatch):
            await self._until_ready(self.supervisor)

    async def _until_ready(self, watch: EngineWatch) -> None:
        """A worker shares the listening socket with the others: it takes no connection (its
        lifespan startup has not finished) until it can serve, so the kernel hands requests only to
        workers that are ready instead of letting a late one answer 503 beside a ready one."""
        waits = (watch.ever_up.wait(), self.follower.synced.wait())
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.config.engine_start_timeout)
        except TimeoutError:
            log.warning("the engine or the registry is not ready; this worker answers 503 until they are")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.supervisor.stop()
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()
        await self.capture.close()  # after the last response: every finished request is written

    # -- what request handlers use
    def needs_load(self, ref: str) -> bool:
        """Whether `ref` is served as an adapter loaded into the engine (LoRA, not the base itself)."""
        info = self.follower.snapshot.versions.get(ref)
        return info is not None and info.serving == "lora" and ref != self.config.base.version

    async def prepare(self, ref: str) -> None:
        """Make `ref` ready to serve before an alias switches to it: load a LoRA, warm prompt embeddings."""
        info = self.follower.snapshot.versions.get(ref)
        if info is None or ref == self.config.base.version:
            return
        if self.needs_load(ref):
            await self.residency.preload(ref)
        elif info.serving == "prompt_embeddings" and self.config.prompt_embeds:
            hook = prepare_hook()
            if hook is not None:
                await hook(await self.loras.local_dir(ref), self.config.base.engine)

    def require_synced(self) -> None:
        """503 until the registry was read once: before that no model name can be told apart."""
        if not self.follower.synced.is_set():
            raise engine_unavailable("The gateway is starting; retry shortly.", retry_after=1)

    def require_engine(self) -> None:
        if not self.supervisor.up:
            state = self.supervisor.state
            raise engine_unavailable(f"The engine is {state}; retry shortly.", retry_after=5)

    def admit(self) -> Callable[[], None]:
        """Take an in-flight slot or raise 429; returns the function that gives it back."""
        if self.in_flight >= self.config.max_in_flight:
            raise too_many_requests(self.config.max_in_flight)
        self.in_flight += 1

        def release() -> None:
            self.in_flight -= 1

        return release

    async def ready(self) -> tuple[bool, str]:
        """Ready = the engine is up and answers, and the registry has been read at least once."""
        if not self.supervisor.up:
            return False, f"engine {self.supervisor.state}"
        if not self.follower.synced.is_set():
            return False, "registry not read yet"
        if not await self.supervisor.probe():
            return False, "engine does not answer"
        return True, "ready"

    # -- internals
    async def _engine_up(self) -> None:
        failed = await self.residency.reload_all()
        if failed:
            log.error("could not reload %s after the engine started; they load on demand", failed)
        live = sorted(set(self.follower.live.values()))
        loras = [ref for ref in live if self.needs_load(ref)][: self.config.max_resident]
        targets = loras + [ref for ref in live if not self.needs_load(ref)]
        results = await asyncio.gather(*(self.prepare(ref) for ref in targets), return_exceptions=True)
        for ref, result in zip(targets, results, strict=False):
            if isinstance(result, BaseException):
                log.error("could not preload %s: %s", ref, result)

    def _fatal(self, message: str) -> None:
        self.fatal = message
        self._on_fatal(message)
