"""The one way tuneloop starts a Ray head: loopback only, token auth, a private temp dir, its own group.

Ray 2.60 on one machine needs care (ENVIRONMENT.md): plain `ray start --head` listens on the
machine's network address, a stray ~/.ray/auth_token silently turns auth on, and a shared temp dir
lets another Ray's `ray_current_cluster` file confuse Ray Train. Every head tuneloop starts comes from
`head_process()`, which sets all of that explicitly and puts every listener on a free port (another
Ray on the machine must not collide with Ray's default ports). It runs `ray start --head --block`, so
the whole head (gcs, raylet, dashboard) is one process group that is stopped by that group, never by
name.

Two ways to run it:

- `running_head()`: a context manager that stops the group on exit (tests, in-process use);
- `head.up()` / `down()`: the embedded head behind `tuneloop ray up`, which outlives the
  command that started it and is found again through files under TUNELOOP_RAY_DIR.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from tuneloop.platform import settings
from tuneloop.platform.errors import TuneloopError
from tuneloop.platform.procs import ManagedProcess, free_port
from tuneloop.platform.settings import LOOPBACK

# Ray puts unix sockets at <temp-dir>/session_<date>_<pid>/sockets/plasma_store; such a path must stay
# under ~107 characters, which leaves about 40 for the temp dir itself.
MAX_TEMP_DIR_CHARS = 40
# `ray start --block` prints this once the node is up; the Jobs API answers a little earlier.
READY_LINE = "Ray runtime started"
# Ray variables a user's shell may hold that must not leak into the head: a dashboard URL in
# RAY_ADDRESS confuses `ray start`, and RAY_AUTH_TOKEN would override our token file.
_CLIENT_ONLY_VARS = ("RAY_ADDRESS", "RAY_AUTH_TOKEN")


def ray_cli() -> str:
    """The `ray` executable of this installation (beside the running Python)."""
    return str(Path(sys.executable).parent / "ray")


@dataclass(frozen=True)
class HeadInfo:
    """Where a head listens and what a client needs: written to head.json for `tuneloop ray up`."""

    pid: int
    leader_ticks: int | None
    address: str  # dashboard / Jobs API, http://127.0.0.1:PORT
    gcs_address: str
    temp_dir: str
    token_path: str
    log_path: str
    ports: dict[str, int] = field(default_factory=dict)


@dataclass
class RayHead:
    """A running head: `env` holds what every client (`ray` CLI, `JobSubmissionClient`) needs, and
    `token` goes in `Authorization: Bearer` for raw HTTP."""

    process: ManagedProcess
    address: str
    gcs_address: str
    temp_dir: Path
    token: str
    env: dict[str, str]


def write_token(path: Path) -> str:
    """A fresh random token in a file only this user can read; returns the token."""
    token = secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether nothing listens on host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def head_process(
    *,
    temp_dir: Path,
    token_path: Path,
    log_path: Path,
    dashboard_port: int | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    ready_timeout: float = 120.0,
) -> tuple[ManagedProcess, HeadInfo]:
    """The `ray start --head --block` process (not started) and where it will listen.

    `token_path` must already hold the token. `temp_dir` must be short (MAX_TEMP_DIR_CHARS).
    """
    if len(str(temp_dir)) > MAX_TEMP_DIR_CHARS:
        raise TuneloopError(
            f"Ray temp dir {temp_dir} is longer than {MAX_TEMP_DIR_CHARS} characters: Ray's unix "
            "socket paths under it would be too long"
        )
    token = token_path.read_text().strip()
    ports = {
        "port": free_port(),
        "dashboard-port": dashboard_port or free_port(),
        "ray-client-server-port": free_port(),
        "node-manager-port": free_port(),
        "object-manager-port": free_port(),
        "dashboard-agent-listen-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "metrics-export-port": free_port(),
        "runtime-env-agent-port": free_port(),
    }
    argv = [
        ray_cli(), "start", "--head", "--block",
        "--node-ip-address", LOOPBACK,
        "--dashboard-host", LOOPBACK,
        "--include-dashboard=true",
        "--temp-dir", str(temp_dir),
        "--disable-usage-stats",
        *(["--num-cpus", str(num_cpus)] if num_cpus is not None else []),
        *(["--num-gpus", str(num_gpus)] if num_gpus is not None else []),
        *[part for flag, port in ports.items() for part in (f"--{flag}", str(port))],
    ]  # fmt: skip
    address = f"http://{LOOPBACK}:{ports['dashboard-port']}"
    proc = ManagedProcess(
        argv,
        log_path=log_path,
        health_url=f"{address}/api/jobs/",
        health_headers={"Authorization": f"Bearer {token}"},
        env=head_env(token_path),
        name="ray-head",
        ready_timeout=ready_timeout,
        ready_check=lambda p: READY_LINE in p.log_tail(200),
    )
    info = HeadInfo(
        pid=0,
        leader_ticks=None,
        address=address,
        gcs_address=f"{LOOPBACK}:{ports['port']}",
        temp_dir=str(temp_dir),
        token_path=str(token_path),
        log_path=str(log_path),
        ports=ports,
    )
    return proc, info


def head_env(token_path: Path) -> dict[str, str]:
    """The head's environment: loopback mode, token auth, and what its job drivers inherit.

    Drivers of `ray job submit` get the raylet's environment, not the submitter's, so the head carries
    the registry and artifact locations of whoever started it, and this installation's bin folder
    first on PATH, so `tuneloop train job.yaml` finds the same tuneloop. A registry URL with a
    password reaches them as a private file's path (jobs.registry_env), like a submitted job's.
    """
    from tuneloop.platform.ray.submit import registry_env

    env = settings.child_env(
        {
            **settings.ray_env(),
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Stop in ~2 s instead of draining for a minute; nothing in a loopback head needs draining.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "TUNELOOP_HOME": str(settings.TUNELOOP_HOME.get()),
            **registry_env(),
            "TUNELOOP_ARTIFACTS": settings.TUNELOOP_ARTIFACTS.get(),
            "TUNELOOP_MODELS_DIR": str(settings.TUNELOOP_MODELS_DIR.get()),
            **settings.hub_env(),
        }
    )
    for name in _CLIENT_ONLY_VARS:
        env.pop(name, None)
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    return env


@contextmanager
def running_head(
    log_dir: Path, *, num_cpus: int = 2, num_gpus: int = 0, ready_timeout: float = 120.0
) -> Iterator[RayHead]:
    """Start a head on free ports with a fresh token in a private /tmp folder; stop its group on exit."""
    # pytest's tmp_path is far too deep for Ray's socket paths: use a short folder directly in /tmp.
    temp_root = Path(tempfile.mkdtemp(prefix="tlray-", dir="/tmp"))
    try:
        token_path = temp_root / "auth_token"
        token = write_token(token_path)
        proc, info = head_process(
            temp_dir=temp_root / "t",
            token_path=token_path,
            log_path=log_dir / f"ray-head-{temp_root.name}.log",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            ready_timeout=ready_timeout,
        )
        with proc:
            yield RayHead(
                process=proc,
                address=info.address,
                gcs_address=info.gcs_address,
                temp_dir=temp_root,
                token=token,
                env=client_env(token_path),
            )
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)


def client_env(token_path: Path, address: str | None = None) -> dict[str, str]:
    """Variables a Ray client of a tuneloop head needs (`ray job submit`, `JobSubmissionClient`)."""
    env = {**settings.ray_env(), "RAY_AUTH_TOKEN_PATH": str(token_path)}
    if address is not None:
        # The `ray job` CLI reads RAY_ADDRESS; tuneloop's own commands read TUNELOOP_RAY_ADDRESS.
        env |= {"RAY_ADDRESS": address, "TUNELOOP_RAY_ADDRESS": address}
    return env


def default_dashboard_port() -> int:
    """The port of TUNELOOP_RAY_ADDRESS (8265 unless set), where `ray up` puts the Jobs API."""
    raw = settings.TUNELOOP_RAY_ADDRESS.get()
    try:
        port = urlparse(raw).port
    except ValueError:
        port = None
    if port is None:
        raise TuneloopError(f"TUNELOOP_RAY_ADDRESS={raw!r} names no port; expected http://127.0.0.1:PORT")
    return port
