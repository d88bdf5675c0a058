"""The HTTP server a gateway process runs: uvicorn, with a hard deadline on stopping.

Used by `tuneloop serve` in its own process (one worker) and by each worker process
(serve/workers.py), which is handed the listening socket its parent bound.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)
NOT_STARTED_EXIT_S = 1.0
"""A process asked to stop while still starting (no request taken yet) is gone this much later."""


class GracefulServer(uvicorn.Server):
    """uvicorn's server; once asked to stop, the process exits `deadline_s` later whatever hangs."""

    def __init__(self, config: uvicorn.Config, deadline_s: float) -> None:
        super().__init__(config)
        self.deadline_s = deadline_s
        self.deadline_armed = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if not self.deadline_armed:
            self.deadline_armed = True
            # Before it serves (a worker waits for the engine in its startup) nothing is in flight.
            deadline = self.deadline_s if self.started else NOT_STARTED_EXIT_S
            threading.Thread(target=_exit_after, args=(deadline, self.started), daemon=True).start()


def _exit_after(seconds: float, started: bool) -> None:
    time.sleep(seconds)
    if started:  # something hung the orderly stop: leave now; the engine's guard stops it
        log.error("the gateway did not stop within %.0f s of the signal; exiting", seconds)
    os._exit(1)


def make_server(
    app: ASGIApp, *, host: str, port: int, grace_s: float, keep_alive_s: float = 75.0
) -> GracefulServer:
    """A server for `app`; its `run(sockets=...)` serves an already bound socket instead.

    `keep_alive_s`: how long an idle client connection stays open (TUNELOOP_KEEP_ALIVE_S).
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=logging.getLevelName(logging.getLogger().level).lower(),
        access_log=False,
        timeout_graceful_shutdown=max(1, round(grace_s)),
        timeout_keep_alive=max(1, round(keep_alive_s)),
        lifespan="on",
    )
    return GracefulServer(config, deadline_s=grace_s + 30.0)


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket several worker processes share (the kernel spreads connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
