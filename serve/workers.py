"""One replica on several cores: `tuneloop serve --workers N` (TUNELOOP_WORKERS).

One Python process proxies at most one core's worth of tokens, so a replica in front of a fast
engine runs N gateway workers. The parent process binds the port, starts the one engine (the
supervisor of a single-process replica: restarts, pid file, guard) and N worker processes that
share the listening socket; the kernel spreads connections among them. Each worker is a whole
gateway (serve/replica.py with an EngineWatch instead of a supervisor): it follows the registry
itself, so a promotion reaches every worker within one poll plus its load, and writes its own
capture (SQLite in WAL mode, or PostgreSQL, takes several writers).

Metrics: prometheus_client's multiprocess mode. The parent makes a private folder for it
(`TUNELOOP_HOME/run/metrics-<pid>`, mode 0700), exports it as PROMETHEUS_MULTIPROC_DIR before
anything imports prometheus_client, removes it when the replica stops, and removes folders of
replicas that died without doing so. Any worker's /metrics then serves the sum of all of them.

Lifetimes: workers get SIGTERM when the parent dies (the parent-death signal, set by each worker)
and when it stops; on SIGTERM the parent stops the workers first (they finish the requests in
flight, up to TUNELOOP_SHUTDOWN_GRACE_S), then the engine. A worker that dies later is started
again; one that dies within its first seconds stops the replica with an error instead (it would
only die again). TUNELOOP_MAX_IN_FLIGHT is the replica's: each worker takes its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.platform.errors import TuneloopError

if TYPE_CHECKING:
    from tuneloop.serve.config import GatewayConfig

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
DIED_YOUNG_S = 10.0
"""A worker that exits sooner than this after its start is broken, not unlucky: the replica stops."""


@contextlib.contextmanager
def metrics_dir(run_dir: Path) -> Iterator[Path]:
    """A private folder for prometheus_client's multiprocess files, removed afterwards."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob("metrics-*"):
        pid = stale.name.removeprefix("metrics-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    path = run_dir / f"metrics-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_workers(config: GatewayConfig, *, host: str, port: int, workers: int) -> None:
    """Serve `config` (a GatewayConfig) with `workers` processes until SIGTERM or SIGINT.

    Call it with PROMETHEUS_MULTIPROC_DIR exported (`metrics_dir`), in the main thread: the
    workers' parent-death signal follows the thread that started them.
    """
    from tuneloop.serve.server import bind_socket

    share = -(-config.max_in_flight // workers)
    worker_config = dataclasses.replace(
        config, engine_owner=os.getpid(), max_in_flight=share, workers=workers
    )
    sock = bind_socket(host, port)
    try:
        asyncio.run(_parent(config, worker_config, sock, host, port, workers))
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def supervised_engine(config: GatewayConfig) -> AsyncIterator[asyncio.Event]:
    """The engine of a replica whose gateways run elsewhere (worker processes, or inside the engine:
    serve/hosted.py), started and restarted here. Yields the event that SIGTERM, SIGINT or an engine
    that can never start sets; on leaving, the engine is stopped, and TuneloopError raised if it
    could never start. Whatever the caller stops in its own `finally` stops before the engine."""
    import httpx

    from tuneloop.serve.engine.pidfile import pid_file
    from tuneloop.serve.engine.supervisor import EngineSupervisor

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fatal: list[str] = []

    def on_fatal(message: str) -> None:
        fatal.append(message)
        stop.set()

    async def nothing_to_reload() -> None:
        return None  # the gateways reload their own adapters when they see the engine back

    client = httpx.AsyncClient(headers=config.engine.headers())
    supervisor = EngineSupervisor(
        config.engine,
        config.log_dir,
        client,
        on_up=nothing_to_reload,
        on_fatal=on_fatal,
        ready_timeout=config.engine_start_timeout,
        pid_file=pid_file(config.run_dir, config.engine.port) if config.run_dir else None,
    )
    engine = asyncio.create_task(supervisor.run(), name="engine-supervisor")
    try:
        yield stop
    finally:
        engine.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await engine
        await supervisor.stop()
        await client.aclose()
    if fatal:
        raise TuneloopError(fatal[0])


async def _parent(
    config: GatewayConfig, worker_config: GatewayConfig, sock: socket.socket, host: str, port: int, n: int
) -> None:
    from prometheus_client import multiprocess

    async with supervised_engine(config) as stop:
        procs = [_spawn(worker_config, sock, host, port, i) for i in range(n)]
        started = [time.monotonic()] * n
        pids = [p.pid for p in procs]
        log.info("gateway on http://%s:%d/v1 with %d workers (pids %s)", host, port, n, pids)
        try:
            while not stop.is_set():
                for i, proc in enumerate(procs):
                    if proc.is_alive():
                        continue
                    multiprocess.mark_process_dead(proc.pid)
                    if time.monotonic() - started[i] < DIED_YOUNG_S:
                        raise TuneloopError(
                            f"gateway worker {i} (pid {proc.pid}) exited at start, code {proc.exitcode}"
                        )
                    log.error(
                        "gateway worker %d (pid %d) exited, code %s; starting it again",
                        i,
                        proc.pid,
                        proc.exitcode,
                    )
                    procs[i], started[i] = _spawn(worker_config, sock, host, port, i), time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)
        finally:
            await asyncio.to_thread(_stop_all, procs, config.shutdown_grace + 30.0)


def _spawn(config: GatewayConfig, sock: socket.socket, host: str, port: int, index: int) -> SpawnProcess:
    import multiprocessing

    level = logging.getLogger("tuneloop").level
    process = multiprocessing.get_context("spawn").Process(
        target=_worker,
        args=(config, sock, host, port, os.getpid(), level),
        name=f"tuneloop-gateway-{index}",
    )
    process.start()
    return process


def _stop_all(procs: list[SpawnProcess], deadline_s: float) -> None:
    """SIGTERM every worker, wait for all (they drain their requests), SIGKILL what is left."""
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    until = time.monotonic() + deadline_s
    for proc in procs:
        proc.join(max(0.0, until - time.monotonic()))
        if proc.is_alive():
            log.error("gateway worker pid %s did not stop in time; killing it", proc.pid)
            proc.kill()
            proc.join(5.0)


def _worker(
    config: GatewayConfig, sock: socket.socket, host: str, port: int, parent: int, level: int
) -> None:
    """One worker process: a whole gateway on the shared socket, until SIGTERM or its parent dies."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tuneloop").setLevel(level)
    from tuneloop.serve.app import create_app
    from tuneloop.serve.server import make_server

    server = make_server(
        create_app(config),
        host=host,
        port=port,
        grace_s=config.shutdown_grace,
        keep_alive_s=config.keep_alive,
    )
    server.run(sockets=[sock])
