"""ManagedProcess: readiness, clear start-up errors, and stopping the whole process group."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from tuneloop.platform.procs import ManagedProcess, ProcessStartError, free_port, group_members

PY = sys.executable


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_context_manager_waits_for_health_and_stops_the_group(tmp_path: Path) -> None:
    port = free_port()
    # The server spawns a helper child (same group) that would otherwise outlive it.
    script = (
        "import subprocess, sys, http.server;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')"
    )
    proc = ManagedProcess(
        [PY, "-c", script],
        log_path=tmp_path / "http.log",
        health_url=f"http://127.0.0.1:{port}/",
        cwd=tmp_path,
    )
    with proc:
        assert proc.ready_seconds is not None
        time.sleep(0.3)
        assert len(group_members(proc.pid)) == 2
    assert not proc.alive()
    assert proc.leftovers() == []


def test_sigkill_after_grace_and_escaped_helpers_are_stopped(tmp_path: Path) -> None:
    # The leader ignores SIGTERM; its helper leaves the group with setsid() and is found by PID.
    script = (
        "import os, signal, subprocess, sys, time;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True);"
        "print('up', flush=True); time.sleep(600)"
    )
    proc = ManagedProcess([PY, "-c", script], log_path=tmp_path / "stubborn.log").start()
    deadline = time.monotonic() + 10
    while "up" not in proc.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.wait_healthy()  # no health URL: only checks it is alive, and remembers its helpers
    assert len(proc.leftovers()) == 2
    started = time.monotonic()
    code = proc.stop(grace=1.0)
    assert code == -9
    assert time.monotonic() - started < 5
    assert proc.leftovers() == []


def test_early_exit_raises_with_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess(
        [PY, "-c", "import sys; print('bad flag --nope'); sys.exit(3)"],
        log_path=tmp_path / "dies.log",
        health_url=f"http://127.0.0.1:{free_port()}/health",
    )
    with pytest.raises(ProcessStartError, match=r"exited with code 3(.|\n)*bad flag --nope"), proc:
        pass


def test_timeout_raises_and_stops(tmp_path: Path) -> None:
    proc = ManagedProcess(
        [PY, "-c", "import time; time.sleep(600)"],
        log_path=tmp_path / "silent.log",
        health_url=f"http://127.0.0.1:{free_port()}/health",
        ready_timeout=1.0,
    )
    with pytest.raises(ProcessStartError, match="was not ready within 1 s"), proc:
        pass
    assert not proc.alive()
    assert proc.leftovers() == []
