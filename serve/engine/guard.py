"""The engine's guard: a small process that leads the engine's process group and dies with its gateway.

    python -m tuneloop.serve.engine.guard --parent GATEWAY_PID -- python -m vllm.entrypoints... ARGS

vLLM's API server starts helpers of its own (an `EngineCore` process, multiprocessing's resource
tracker) in its process group. A parent-death signal on the API server alone would leave those
running when the gateway is killed with SIGKILL, holding memory (and, were the API server to be
restarted, the port). So the gateway starts this guard instead, as the leader of a new session;
the guard starts the engine inside its group, and every 0.2 s checks that the gateway is still its
parent. When the gateway is gone, however it died, the guard stops the whole group: SIGTERM, up to
5 s, then SIGKILL (the guard included). The engine also gets the parent-death signal for the
guard, so nothing survives the guard being killed either.

Stopping the group with SIGTERM (what the gateway does) reaches the engine directly; the guard
then waits for it and exits with its exit code, so the gateway's supervisor sees the engine's.
Standard library only: it starts in milliseconds and imports nothing of tuneloop but this module.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from types import FrameType

PR_SET_PDEATHSIG = 1
POLL_S = 0.2
TERM_GRACE_S = 5.0


def _die_with_guard(guard: int) -> None:
    """In the engine, after fork: SIGKILL when the guard dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != guard:
        os.kill(os.getpid(), signal.SIGKILL)


def _stop_group() -> None:
    """SIGTERM the guard's group (itself spared), wait, then SIGKILL all of it, the guard last."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    while time.monotonic() < deadline and _others_in_group():
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)


def _others_in_group() -> bool:
    me, group = os.getpid(), os.getpgid(0)
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            raw = open(f"/proc/{name}/stat").read()  # noqa: SIM115 (a one-line read)
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == group:
            return True
    return False


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--parent" or argv[2] != "--":
        print("usage: python -m tuneloop.serve.engine.guard --parent PID -- COMMAND...", file=sys.stderr)
        return 2
    parent = int(argv[1])
    if os.getppid() != parent:  # the gateway died before we got here
        return 1
    guard = os.getpid()

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        pass  # the engine got the same signal (the whole group did): wait for it below

    # Before the engine exists, so a group signal in between cannot end the guard without the
    # engine's exit code (the engine starts with default handlers: exec resets handled signals).
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    engine = subprocess.Popen(argv[3:], preexec_fn=lambda: _die_with_guard(guard))
    while True:
        code = engine.poll()
        if code is not None:
            return code if code >= 0 else 128 - code
        if os.getppid() != parent:
            print(f"[guard] gateway (pid {parent}) is gone; stopping the engine's group", flush=True)
            _stop_group()
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
