"""The gateway's HTTP server (serve/server.py): a process asked to stop while it is still starting
(a worker waiting for the engine in its startup) leaves at once rather than after the grace period
meant for requests in flight. Real uvicorn, in a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys

SCRIPT = """
import asyncio
from contextlib import asynccontextmanager
from starlette.applications import Starlette
from tuneloop.serve.server import bind_socket, make_server

@asynccontextmanager
async def lifespan(app):
    print("starting", flush=True)
    await asyncio.Event().wait()  # an engine that never comes up
    yield

sock = bind_socket("127.0.0.1", 0)
make_server(Starlette(lifespan=lifespan), host="127.0.0.1", port=0, grace_s=120).run(sockets=[sock])
"""


def test_a_server_stopped_during_its_startup_exits_long_before_the_grace_period() -> None:
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "starting\n"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)  # the grace period is 120 s (+30 s): far beyond this
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
