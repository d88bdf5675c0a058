"""Start, health-check and stop the servers tuneloop runs as subprocesses (vLLM, a Ray head, ...).

Each server gets its own process group (`start_new_session=True`), so stopping it reaches every
helper it spawned without ever killing by name: SIGTERM to the group, a grace period, then SIGKILL
to the group. Helpers that left the group (a `setsid` of their own) are remembered by PID while the
server runs and stopped the same way. Output goes to a log file whose tail is quoted when the server
dies before it is ready, so the error says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, NamedTuple, Self

from tuneloop.platform.errors import TuneloopError
from tuneloop.platform.settings import LOOPBACK, child_env

log = logging.getLogger(__name__)


class ProcessStartError(TuneloopError):
    """A managed server exited or never answered its health URL; the message quotes its log."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks it; a race with other starters remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Stat(NamedTuple):
    state: str
    ppid: int
    pgrp: int
    start_ticks: int  # start time since boot: tells a reused PID from the process we saw


def _proc_stat(pid: int) -> _Stat | None:
    """A PID's entry in /proc/<pid>/stat, or None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields we want follow the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in {"Z", "X"}:
        return None
    return _Stat(fields[0], int(fields[1]), int(fields[2]), int(fields[19]))


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) PIDs whose process group is `pgid`."""
    return [pid for pid in _all_pids() if (stat := _proc_stat(pid)) is not None and stat.pgrp == pgid]


def _descendants(root: int) -> dict[int, int]:
    """Live PIDs below `root` in the parent tree, each with its start time."""
    stats = {pid: stat for pid in _all_pids() if (stat := _proc_stat(pid)) is not None}
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = stats[child].start_ticks
            todo.append(child)
    return found


class ManagedProcess:
    """One server subprocess in its own process group, with a log file and an HTTP health check.

    Ready means: the health URL (if any) answers 200 and `ready_check(self)` (if any) is true, for
    servers whose HTTP side comes up before the rest (a Ray head's dashboard before its raylet).
    Use as a context manager (`with ManagedProcess(...) as proc:` starts it, waits until healthy,
    and stops it on exit), or call `start()`, `wait_healthy()` and `stop()` yourself.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        health_url: str | None = None,
        health_headers: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
        ready_timeout: float = 180.0,
        ready_check: Callable[[ManagedProcess], bool] | None = None,
    ) -> None:
        self.argv = [str(arg) for arg in argv]
        self.log_path = log_path
        self.health_url = health_url
        self.health_headers = dict(health_headers or {})
        self.env = dict(env) if env is not None else child_env()
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self.ready_timeout = ready_timeout
        self.ready_check = ready_check
        self.ready_seconds: float | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_at = 0.0
        self._seen: dict[int, int] = {}  # pid -> start time of every descendant seen

    # -- lifecycle
    def start(self) -> Self:
        """Launch the command in a new session (its own process group), output appended to the log."""
        if self._popen is not None:
            raise ProcessStartError(f"{self.name} was already started (pid {self._popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._started_at = time.monotonic()
        self._popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.info("started %s (pid %d), log %s", self.name, self._popen.pid, self.log_path)
        return self

    def wait_healthy(self, timeout: float | None = None, interval: float = 0.25) -> float:
        """Poll until the server is ready (see the class docstring); return the seconds since `start()`.

        Raises `ProcessStartError` with the log tail when the process exits first or `timeout`
        (default: `ready_timeout`) passes.
        """
        popen = self._require_started()
        limit = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            self._remember_descendants()
            code = popen.poll()
            if code is not None:
                raise ProcessStartError(
                    f"{self.name} exited with code {code} before it was ready; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if (self.health_url is None or self._healthy()) and (
                self.ready_check is None or self.ready_check(self)
            ):
                self.ready_seconds = time.monotonic() - self._started_at
                log.info("%s ready after %.1f s", self.name, self.ready_seconds)
                return self.ready_seconds
            if time.monotonic() > deadline:
                self.stop()
                raise ProcessStartError(
                    f"{self.name} was not ready within {limit:.0f} s (health URL {self.health_url}); "
                    f"raise the timeout if it is only slow. Last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM the process group, wait up to `grace` seconds, then SIGKILL what is left.

        Returns the leader's exit code (None if it was never started). Safe to call twice.
        """
        if self._popen is None:
            return None
        pgid = self._popen.pid  # a session leader's group id is its pid
        if self._popen.poll() is not None and not self.leftovers():
            self._close_log()  # already stopped: signal nothing (the group id may be reused by now)
            return self._popen.returncode
        self._remember_descendants()
        self._signal_all(pgid, self._strays(pgid), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (self._popen.poll() is None or self.leftovers()):
            time.sleep(0.1)
        if left := self.leftovers():
            log.warning("%s: SIGKILL to %s, still alive %.0f s after SIGTERM", self.name, left, grace)
            self._signal_all(pgid, self._strays(pgid), signal.SIGKILL)
        code = self._popen.wait()
        deadline = time.monotonic() + 5
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._close_log()
        return code

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- inspection
    @property
    def pid(self) -> int:
        """PID of the leader, which is also the process group id."""
        return self._require_started().pid

    def alive(self) -> bool:
        """Whether the leader process is still running."""
        return self._popen is not None and self._popen.poll() is None

    def leftovers(self) -> list[int]:
        """PIDs of the group, or seen as its descendants, that are still alive (empty after `stop()`)."""
        if self._popen is None:
            return []
        return sorted(set(group_members(self._popen.pid)) | set(self._strays(self._popen.pid)))

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log file."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals
    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise ProcessStartError(f"{self.name} has not been started")
        return self._popen

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _healthy(self) -> bool:
        assert self.health_url is not None
        request = urllib.request.Request(self.health_url, headers=self.health_headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def _remember_descendants(self) -> None:
        # Remember every helper seen so far, so one that escaped the group (setsid) is stopped too.
        if self._popen is not None and self._popen.poll() is None:
            self._seen.update(_descendants(self._popen.pid))

    def _strays(self, pgid: int) -> list[int]:
        """Remembered descendants outside the group that still run (same PID and start time)."""
        strays = []
        for pid, start in self._seen.items():
            stat = _proc_stat(pid)
            if stat is not None and stat.start_ticks == start and stat.pgrp != pgid:
                strays.append(pid)
        return strays

    @staticmethod
    def _signal_all(pgid: int, pids: Sequence[int], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def start_ticks(pid: int) -> int | None:
    """When `pid` started (ticks since boot), or None if it is gone: PID plus this names one process."""
    stat = _proc_stat(pid)
    return stat.start_ticks if stat is not None else None


def stop_group(pgid: int, *, leader_ticks: int | None = None, grace: float = 15.0) -> list[int]:
    """Stop a server another process started (a detached Ray head) by its process group: `ray down`.

    Only the group id survives in a pid file, so: if its leader still runs but started at another
    time than `leader_ticks`, the PID was reused and our group is gone (the kernel never reuses a PID
    that still names a process group), so nothing is signalled. Otherwise SIGTERM goes to the group
    and to the leader's descendants that left it (Ray runs job drivers in sessions of their own),
    SIGKILL follows after `grace` seconds. Returns the PIDs still alive at the end (empty on success).
    """
    leader = _proc_stat(pgid)
    if leader is not None and leader_ticks is not None and leader.start_ticks != leader_ticks:
        return []
    seen = _descendants(pgid) if leader is not None else {}

    def alive() -> list[int]:
        strays = [pid for pid, ticks in seen.items() if start_ticks(pid) == ticks]
        return sorted(set(group_members(pgid)) | set(strays))

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        left = alive()
        if not left:
            return []
        if sig == signal.SIGKILL:
            log.warning("SIGKILL to %s, still alive %.0f s after SIGTERM", left, grace)
        ManagedProcess._signal_all(pgid, [pid for pid in left if pid in seen], sig)
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    return alive()
