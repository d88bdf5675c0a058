"""The engine's guard (serve/engine/guard.py): the engine's whole group dies with its gateway.

A stand-in gateway (a small Python process) starts the guard the way the supervisor does, over a
stand-in engine that starts a helper of its own, as vLLM does (its EngineCore). The gateway is
then killed with SIGKILL: no cleanup code of it runs, and the group must still be gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tuneloop.platform.procs import group_members

ENGINE = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"
)
EXITS_3_ON_SIGTERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); "
    "print('ready', flush=True); time.sleep(60)"
)
GATEWAY = textwrap.dedent(
    """
    import os, subprocess, sys, time
    guard = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.serve.engine.guard", "--parent", str(os.getpid()), "--",
         sys.executable, "-c", sys.argv[1]],
        start_new_session=True,
    )
    print(guard.pid, flush=True)
    time.sleep(120)
    """
)


def _wait(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_killing_the_gateway_stops_the_engine_and_its_helpers() -> None:
    gateway = subprocess.Popen([sys.executable, "-c", GATEWAY, ENGINE], stdout=subprocess.PIPE, text=True)
    assert gateway.stdout is not None
    guard = int(gateway.stdout.readline())
    try:
        assert _wait(lambda: len(group_members(guard)) == 3, 20), group_members(
            guard
        )  # guard, engine, helper
        os.kill(gateway.pid, signal.SIGKILL)
        gateway.wait()
        assert _wait(lambda: not group_members(guard), 10), group_members(guard)
    finally:
        if group_members(guard):
            os.killpg(guard, signal.SIGKILL)
        if gateway.poll() is None:
            gateway.kill()


def test_a_group_sigterm_passes_the_engines_exit_code_through_the_guard() -> None:
    guard = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.serve.engine.guard", "--parent", str(os.getpid()), "--",
         sys.executable, "-c", EXITS_3_ON_SIGTERM],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert guard.stdout is not None and guard.stdout.readline() == "ready\n"  # its handler is set
        assert len(group_members(guard.pid)) == 2
        os.killpg(guard.pid, signal.SIGTERM)
        assert guard.wait(10) == 3
    finally:
        if group_members(guard.pid):
            os.killpg(guard.pid, signal.SIGKILL)
