"""The gateway's HTTP server (serve/server.py): a process asked to stop while it is still starting
(a worker waiting for the engine in its startup) leaves at once rather than after the grace period
meant for requests in flight; idle client connections are closed after the keep-alive it is given
(TUNELOOP_KEEP_ALIVE_S), not uvicorn's 5 s. Real uvicorn, in a subprocess."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneloop.platform.procs import free_port
from tuneloop.serve.config import GatewayConfig
from tuneloop.serve.engine.launch import ENGINE_KEEP_ALIVE_S, engine_env

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


SERVING = """
import sys
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from tuneloop.serve.server import bind_socket, make_server

sock = bind_socket("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
make_server(app, host="127.0.0.1", port=0, grace_s=1, keep_alive_s=float(sys.argv[1])).run(sockets=[sock])
"""


def idle_connection_after(keep_alive_s: float, idle_s: float) -> bool:
    """Whether a connection that answered one request is still open after `idle_s` seconds."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVING, str(keep_alive_s)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            for _ in range(100):  # the port is bound before uvicorn serves it: retry the first request
                conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                if conn.recv(4096).endswith(b"ok"):
                    break
            time.sleep(idle_s)
            conn.settimeout(0.5)
            try:
                return conn.recv(1) != b""  # b"": the server closed it
            except TimeoutError:
                return True  # nothing to read and not closed: still open
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_idle_connections_close_after_the_keep_alive_given_not_uvicorns_default() -> None:
    assert idle_connection_after(keep_alive_s=1, idle_s=2.5) is False  # uvicorn's 5 s would keep it
    assert idle_connection_after(keep_alive_s=30, idle_s=2.5) is True


def test_keep_alive_setting_and_the_engines_outlasting_the_gateways_pool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path
) -> None:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.setenv("TUNELOOP_ENGINE_PORT", str(free_port()))
    assert GatewayConfig.from_settings(str(tiny_model_dir)).keep_alive == 75  # the default
    monkeypatch.setenv("TUNELOOP_KEEP_ALIVE_S", "120")
    assert GatewayConfig.from_settings(str(tiny_model_dir)).keep_alive == 120
    # The engine must never close an idle connection before the gateway's pool drops it.
    assert int(engine_env()["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) == ENGINE_KEEP_ALIVE_S > 5
