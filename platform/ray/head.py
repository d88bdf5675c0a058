"""The embedded Ray head behind `tuneloop ray up` / `down` / `status` / `env`: detached, found by files.

`up` starts the head from `cluster.head_process()` and returns while it keeps running; a later
process finds it again through files under TUNELOOP_RAY_DIR: `head.pid` (the leader's PID, which is
also its process group id), `head.json` (address, ports, temp dir, the leader's start time, so a
reused PID is never mistaken for ours), `auth_token` (a fresh token per `up`, mode 0600) and
`head.log`. `down` stops exactly that process group and removes the state; it never stops Ray by
name, so other Ray clusters on the machine are untouched.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shlex
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneloop.platform import settings
from tuneloop.platform.errors import ConflictError, TuneloopError
from tuneloop.platform.procs import start_ticks, stop_group
from tuneloop.platform.ray.cluster import (
    MAX_TEMP_DIR_CHARS,
    HeadInfo,
    client_env,
    default_dashboard_port,
    head_process,
    port_is_free,
    write_token,
)
from tuneloop.platform.settings import LOOPBACK

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateFiles:
    """The files that let a later process find, use and stop the embedded head."""

    root: Path

    @property
    def pid(self) -> Path:
        return self.root / "head.pid"

    @property
    def info(self) -> Path:
        return self.root / "head.json"

    @property
    def token(self) -> Path:
        return self.root / "auth_token"

    @property
    def log(self) -> Path:
        return self.root / "head.log"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


def state_files() -> StateFiles:
    return StateFiles(settings.TUNELOOP_RAY_DIR.get())


@contextmanager
def _locked(files: StateFiles) -> Iterator[None]:
    """Serialise `up` and `down`: two `up`s at once must not both start a head."""
    files.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with files.lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def read_info(files: StateFiles | None = None) -> HeadInfo | None:
    """The embedded head's address file, or None when there is none (or it is unreadable)."""
    files = files or state_files()
    try:
        return HeadInfo(**json.loads(files.info.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running_info(files: StateFiles | None = None) -> HeadInfo | None:
    """The embedded head's info if its leader process still runs, else None."""
    files = files or state_files()
    info = read_info(files)
    if info is None or info.pid <= 0:
        return None
    ticks = start_ticks(info.pid)
    if ticks is None or (info.leader_ticks is not None and ticks != info.leader_ticks):
        return None
    return info


def _temp_dir(files: StateFiles) -> Path:
    """A short Ray temp dir: inside TUNELOOP_RAY_DIR when that path is short enough, else in /tmp."""
    inside = files.root / "t"
    if len(str(inside)) <= MAX_TEMP_DIR_CHARS:
        return inside
    return Path(tempfile.mkdtemp(prefix="tlray-", dir="/tmp")) / "t"


def up(
    *, dashboard_port: int | None = None, num_cpus: int | None = None, ready_timeout: float = 120.0
) -> HeadInfo:
    """Start the embedded head and return once its Jobs API and raylet are up; it outlives this process.

    Refuses while one started from this TUNELOOP_RAY_DIR runs. A stale state (the head died or the
    machine rebooted) is cleaned first.
    """
    files = state_files()
    with _locked(files):
        if (running := running_info(files)) is not None:
            raise ConflictError(
                f"a Ray head is already running (pid {running.pid}, {running.address}); "
                "stop it with `tuneloop ray down` first"
            )
        if (stale := read_info(files)) is not None and stale.pid > 0:
            # The leader died but helpers of its group may live on (a raylet holding ports).
            stop_group(stale.pid, leader_ticks=stale.leader_ticks, grace=5.0)
        _clean(files, stale)
        port = dashboard_port or default_dashboard_port()
        if not port_is_free(port):
            raise ConflictError(
                f"port {port} on {LOOPBACK} is in use (another Ray head?): pick a free one with "
                f"`tuneloop ray up --dashboard-port N` (clients then follow `tuneloop ray env`)"
            )
        write_token(files.token)
        files.log.unlink(missing_ok=True)  # the ready check must not find an old run's READY_LINE
        proc, info = head_process(
            temp_dir=_temp_dir(files),
            token_path=files.token,
            log_path=files.log,
            dashboard_port=port,
            num_cpus=num_cpus,
            ready_timeout=ready_timeout,
        )
        proc.start()
        info = HeadInfo(**{**asdict(info), "pid": proc.pid, "leader_ticks": start_ticks(proc.pid)})
        # Written before the wait, so `down` can stop a head whose `up` was interrupted.
        files.pid.write_text(f"{proc.pid}\n")
        files.info.write_text(json.dumps(asdict(info), indent=2) + "\n")
        try:
            proc.wait_healthy()
        except BaseException:
            proc.stop()
            _clean(files, info)
            raise
        return info


def down(grace: float = 15.0) -> HeadInfo | None:
    """Stop the embedded head by its process group and remove its state; None if none was recorded."""
    files = state_files()
    with _locked(files):
        info = read_info(files)
        try:
            pid = int(files.pid.read_text().strip())
        except (OSError, ValueError):
            pid = info.pid if info is not None else 0
        if pid <= 0:
            _clean(files, info)
            return None
        ticks = info.leader_ticks if info is not None else None
        if ticks is None and not _is_ray_head(pid):
            # Without head.json the start time is unknown: never signal a PID that is not a Ray head.
            log.warning("pid %d from %s is not a Ray head; removing the stale state only", pid, files.pid)
            _clean(files, info)
            return info
        left = stop_group(pid, leader_ticks=ticks, grace=grace)
        if left:
            raise TuneloopError(
                f"Ray head processes {left} are still alive after SIGKILL; state kept in {files.root}"
            )
        _clean(files, info)
        return info or HeadInfo(pid, None, "", "", "", str(files.token), str(files.log))


def _is_ray_head(pid: int) -> bool:
    """Whether `pid` runs `ray start --head` (a check before signalling, never a way to find Rays)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"start" in argv and b"--head" in argv


def _clean(files: StateFiles, info: HeadInfo | None) -> None:
    """Remove what a stopped head leaves: pid, address and token files, and Ray's temp dir.

    head.log stays for a post-mortem (the next `up` replaces it).
    """
    for path in (files.pid, files.info, files.token):
        path.unlink(missing_ok=True)
    if info is not None and info.temp_dir:
        temp = Path(info.temp_dir)
        # A /tmp fallback is a folder of its own (tlray-XXXX/t): remove the parent too.
        shutil.rmtree(temp.parent if temp.parent.name.startswith("tlray-") else temp, ignore_errors=True)


# -- `tuneloop ray ...` commands


def ray_up(dashboard_port: int | None = None, num_cpus: int | None = None) -> None:
    """Start the embedded Ray head (loopback, token auth) in the background for training jobs.

    It keeps running after this command returns; `tuneloop ray down` stops it. Its state (pid, token,
    address, log) lives in TUNELOOP_RAY_DIR, and its job drivers see this shell's TUNELOOP_HOME,
    TUNELOOP_DB_URL and TUNELOOP_ARTIFACTS, so `ray job submit` jobs write the same registry.

    Args:
        dashboard_port: Port of the dashboard / Jobs API (default: the port of TUNELOOP_RAY_ADDRESS, 8265).
        num_cpus: CPUs Ray may schedule (default: what Ray detects).
    """
    info = up(dashboard_port=dashboard_port, num_cpus=num_cpus)
    print(
        f"Ray head running (pid {info.pid}), listening on {LOOPBACK} only\n"
        f"  dashboard / Jobs API: {info.address}\n"
        f"  GCS address:          {info.gcs_address}\n"
        f"  auth token:           {info.token_path}\n"
        f"  log:                  {info.log_path}\n"
        "Submit training jobs with the token in the environment:\n"
        '  eval "$(tuneloop ray env)"\n'
        f"  ray job submit --address {info.address} --working-dir DIR -- tuneloop train job.yaml\n"
        "  # or: tuneloop jobs submit job.yaml --follow\n"
        "Stop it with: tuneloop ray down"
    )


def ray_down() -> None:
    """Stop the Ray head `tuneloop ray up` started (by its process group) and remove its state."""
    was_running = running_info()
    info = down()
    if info is None:
        print(f"no Ray head recorded in {state_files().root}; nothing to stop")
    elif was_running is None:
        print(f"Ray head (pid {info.pid}) was no longer running; removed its state")
    else:
        print(f"stopped Ray head (pid {info.pid}, {info.address})")


def ray_status() -> int:
    """Say whether the embedded Ray head runs, where it listens, and whether its Jobs API answers."""
    info = running_info()
    if info is None:
        print(f"no Ray head running from {state_files().root}; start one with `tuneloop ray up`")
        return 1
    answers = _jobs_api_answers(info)
    print(
        f"Ray head running (pid {info.pid})\n"
        f"  dashboard / Jobs API: {info.address} ({'answering' if answers else 'NOT answering'})\n"
        f"  GCS address:          {info.gcs_address}\n"
        f"  auth token:           {info.token_path}\n"
        f"  temp dir:             {info.temp_dir}\n"
        f"  log:                  {info.log_path}"
    )
    return 0 if answers else 1


def ray_env() -> None:
    """Print `export` lines a shell needs to use the embedded head: `eval "$(tuneloop ray env)"`.

    Loopback mode, token auth with the head's token file, and its address for both the `ray job` CLI
    (RAY_ADDRESS) and tuneloop (TUNELOOP_RAY_ADDRESS).
    """
    info = running_info()
    address = info.address if info is not None else settings.TUNELOOP_RAY_ADDRESS.get()
    token_path = Path(info.token_path) if info is not None else state_files().token
    for name, value in client_env(token_path, address).items():
        print(f"export {name}={shlex.quote(value)}")
    if info is None:
        print(f"# no Ray head is running from {state_files().root}: start one with `tuneloop ray up`")


def _jobs_api_answers(info: HeadInfo) -> bool:
    try:
        token = Path(info.token_path).read_text().strip()
        request = urllib.request.Request(
            f"{info.address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError):
        return False
