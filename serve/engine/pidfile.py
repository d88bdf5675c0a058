"""The engine's pid file: which engine a replica started on a port, so a later replica can tell.

With its guard (engine/guard.py) an engine dies with its gateway, but an engine started by an
older build, or one whose guard was killed along with its gateway, may still hold the port. A new
replica must never kill a process it did not start, so it reclaims the port only when everything
matches what its predecessor wrote here: the pid, that process's start time (a reused pid has
another), its command line (a vLLM server on exactly this port), and that the gateway which
started it is gone. Anything else is refused with a message that says what holds the
port and what to do.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneloop.platform.errors import ConfigError
from tuneloop.platform.procs import start_ticks, stop_group

log = logging.getLogger(__name__)
ENGINE_MODULE = b"vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class EngineRecord:
    """One engine as its gateway started it."""

    pid: int
    start_ticks: int
    port: int
    gateway_pid: int
    gateway_ticks: int


def pid_file(run_dir: Path, port: int) -> Path:
    return run_dir / f"engine-{port}.json"


def record_engine(path: Path, pid: int, port: int) -> None:
    """Write the record of the engine this process just started (atomically)."""
    ticks, own = start_ticks(pid), start_ticks(os.getpid())
    if ticks is None or own is None:
        return  # it died already: nothing to reclaim later
    record = EngineRecord(pid=pid, start_ticks=ticks, port=port, gateway_pid=os.getpid(), gateway_ticks=own)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(record)))
    partial.replace(path)


def forget_engine(path: Path, pid: int) -> None:
    """Remove the record if it is still the one of `pid` (another replica may have written its own)."""
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _is_engine_on(pid: int, port: int) -> bool:
    argv = _cmdline(pid)
    return ENGINE_MODULE in argv and any(
        a == b"--port" and b == str(port).encode() for a, b in itertools.pairwise(argv)
    )


def reclaim_port(port: int, run_dir: Path, in_use: Callable[[int], bool], wait_s: float = 30.0) -> None:
    """Free `port` if an engine this home's replica left behind holds it; else raise ConfigError."""
    path = pid_file(run_dir, port)
    advice = "set TUNELOOP_ENGINE_PORT to a free port for this replica, or stop what holds it"
    try:
        record = EngineRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        raise ConfigError(
            f"engine port {port} is in use by a process no replica of this TUNELOOP_HOME started "
            f"(no engine record at {path}); {advice}"
        ) from None
    if start_ticks(record.pid) != record.start_ticks or not _is_engine_on(record.pid, port):
        raise ConfigError(
            f"engine port {port} is in use, but not by the engine recorded in {path} (pid {record.pid} "
            f"has exited or is another process now); {advice}"
        )
    if start_ticks(record.gateway_pid) == record.gateway_ticks:
        raise ConfigError(
            f"engine port {port} is held by the engine (pid {record.pid}) of a replica that is still "
            f"running (gateway pid {record.gateway_pid}); stop that replica first, or {advice}"
        )
    log.warning(
        "engine port %d is held by the engine (pid %d) a replica left behind when its gateway (pid %d) "
        "died; stopping that engine to reclaim the port",
        port,
        record.pid,
        record.gateway_pid,
    )
    left = stop_group(record.pid, leader_ticks=record.start_ticks, grace=10.0)
    deadline = time.monotonic() + wait_s
    while in_use(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left or in_use(port):
        raise ConfigError(
            f"engine port {port}: the engine left behind (pid {record.pid}) did not stop; {advice}"
        )
    path.unlink(missing_ok=True)
