"""Reclaiming an engine port (serve/engine/pidfile.py): only from an engine a dead replica left behind.

A stand-in "engine" is a small Python process whose argv reads like vLLM's server on the port and
which holds that port, so the checks run against real processes without starting vLLM. Every
process here is started by the test and stopped by its own pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneloop.platform.errors import ConfigError
from tuneloop.platform.procs import free_port, start_ticks
from tuneloop.serve.config import port_in_use
from tuneloop.serve.engine.pidfile import pid_file, reclaim_port, record_engine

HOLD_PORT = (
    "import socket, sys, time; s = socket.socket(); "
    "s.bind(('127.0.0.1', int(sys.argv[3]))); s.listen(); time.sleep(120)"
)


def _hold(port: int, *, as_engine: bool = True) -> subprocess.Popen[bytes]:
    module = "vllm.entrypoints.openai.api_server" if as_engine else "something.else"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_PORT, module, "--port", str(port)], start_new_session=True
    )
    deadline = time.monotonic() + 10
    while not port_in_use(port):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


@pytest.fixture
def port() -> Iterator[int]:
    yield free_port()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _reclaim(port: int, run_dir: Path) -> None:
    reclaim_port(port, run_dir, port_in_use, wait_s=10)


def test_a_port_held_without_a_record_is_refused_and_the_holder_left_alone(port: int, tmp_path: Path) -> None:
    holder = _hold(port)
    try:
        with pytest.raises(ConfigError, match=f"engine port {port} is in use by a process no replica"):
            _reclaim(port, tmp_path)
        assert holder.poll() is None
    finally:
        _stop(holder)


def test_an_engine_whose_gateway_still_runs_is_refused(port: int, tmp_path: Path) -> None:
    holder = _hold(port)
    try:
        record_engine(pid_file(tmp_path, port), holder.pid, port)  # "gateway" = this live process
        with pytest.raises(ConfigError, match="replica that is still running"):
            _reclaim(port, tmp_path)
        assert holder.poll() is None
    finally:
        _stop(holder)


def test_a_recorded_pid_that_is_now_another_process_is_refused(port: int, tmp_path: Path) -> None:
    holder = _hold(port, as_engine=False)
    try:
        record_engine(pid_file(tmp_path, port), holder.pid, port)
        record = json.loads(pid_file(tmp_path, port).read_text())
        record["gateway_pid"], record["gateway_ticks"] = 1, -1  # its gateway is gone
        pid_file(tmp_path, port).write_text(json.dumps(record))
        with pytest.raises(ConfigError, match="not by the engine recorded"):
            _reclaim(port, tmp_path)
        assert holder.poll() is None
    finally:
        _stop(holder)


def test_an_engine_left_behind_by_a_dead_gateway_is_stopped_and_the_port_reclaimed(
    port: int, tmp_path: Path
) -> None:
    holder = _hold(port)
    try:
        record_engine(pid_file(tmp_path, port), holder.pid, port)
        record = json.loads(pid_file(tmp_path, port).read_text())
        assert record["start_ticks"] == start_ticks(holder.pid)
        record["gateway_pid"], record["gateway_ticks"] = 1, -1  # its gateway is gone
        pid_file(tmp_path, port).write_text(json.dumps(record))
        _reclaim(port, tmp_path)
        assert holder.wait(10) is not None and not port_in_use(port)
        assert not pid_file(tmp_path, port).exists()
    finally:
        _stop(holder)
