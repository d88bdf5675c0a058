"""Real servers for tests: a vLLM OpenAI server and a loopback Ray head, both via `procs.py`.

Both run in their own process group on free 127.0.0.1 ports and are stopped by that group (never by
name), so a failing test cannot leave an engine or a raylet behind. The settings come from
ENVIRONMENT.md: vLLM on the CPU needs an explicit KV-cache size and runs its engine in-process; Ray
needs loopback mode, explicit token auth with a private token file, and a private short temp dir.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import socket
import struct
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.platform.procs import ManagedProcess, free_port
from tuneloop.platform.settings import LOOPBACK, child_env, ray_env
from tuneloop.serve.engine.launch import EngineConfig, engine_process

RAY_CLI = str(Path(sys.executable).parent / "ray")


@dataclass
class VllmServer:
    """A running vLLM OpenAI server: `base_url` ends in /v1, `model` is the served base model name."""

    process: ManagedProcess
    port: int
    model: str

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@contextmanager
def start_vllm(
    model_dir: Path,
    log_dir: Path,
    *,
    max_lora_rank: int = 16,
    max_loras: int = 4,
    kv_cache_bytes: int = 64 * 2**20,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 300.0,
) -> Iterator[VllmServer]:
    """Serve `model_dir` the way tuneloop does (serve/engine/launch.py); yield once `/health` answers 200."""
    config = EngineConfig(
        model=str(model_dir),
        port=free_port(),
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
        kv_cache_bytes=kv_cache_bytes,
        max_model_len=512,
        dtype="float32",
        extra_args=extra_args,
    )
    with engine_process(config, log_dir, ready_timeout=ready_timeout) as proc:
        yield VllmServer(process=proc, port=config.port, model=config.model)


@dataclass
class RayHead:
    """A running loopback Ray head with token auth.

    `address` is the dashboard / Jobs API URL; `env` holds the variables every client (the `ray`
    CLI, `JobSubmissionClient`) needs; `token` goes in `Authorization: Bearer` for raw HTTP.
    """

    process: ManagedProcess
    address: str
    gcs_address: str
    temp_dir: Path
    token: str
    env: dict[str, str] = field(default_factory=dict)


@contextmanager
def start_ray_head(log_dir: Path, *, num_cpus: int = 2, ready_timeout: float = 120.0) -> Iterator[RayHead]:
    """Start `ray start --head --block` in its own process group; yield once the Jobs API answers."""
    # Ray's unix sockets live under the temp dir and their paths must stay under ~107 characters,
    # so use a short folder directly in /tmp rather than pytest's deep tmp_path.
    temp_dir = Path(tempfile.mkdtemp(prefix="tlray-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    # The same variables as the platform's embedded head, with the token file in our temp dir.
    client_env = {**ray_env(), "RAY_AUTH_TOKEN_PATH": str(token_path)}
    gcs_port, dashboard_port = free_port(), free_port()
    # Every listener on a free port: another Ray on this machine must not collide with Ray's defaults.
    ports = {
        "--port": gcs_port,
        "--dashboard-port": dashboard_port,
        "--ray-client-server-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    argv = [
        RAY_CLI, "start", "--head", "--block",
        "--node-ip-address", LOOPBACK,
        "--dashboard-host", LOOPBACK,
        "--include-dashboard=true",
        "--num-cpus", str(num_cpus),
        "--num-gpus", "0",
        "--temp-dir", str(temp_dir / "t"),
        "--disable-usage-stats",
        *[str(part) for flag, port in ports.items() for part in (flag, port)],
    ]  # fmt: skip
    address = f"http://{LOOPBACK}:{dashboard_port}"
    proc = ManagedProcess(
        argv,
        log_path=log_dir / f"ray-head-{gcs_port}.log",
        health_url=f"{address}/api/jobs/",
        health_headers={"Authorization": f"Bearer {token}"},
        env=child_env(
            {**client_env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        ),
        name="ray-head",
        ready_timeout=ready_timeout,
        # The Jobs API answers before the raylet runs; `ray start` prints this once the node is up.
        ready_check=lambda proc: "Ray runtime started" in proc.log_tail(200),
    )
    try:
        with proc:
            yield RayHead(
                process=proc,
                address=address,
                gcs_address=f"{LOOPBACK}:{gcs_port}",
                temp_dir=temp_dir,
                token=token,
                env=client_env,
            )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def listening_addresses(pids: Sequence[int]) -> set[tuple[str, int]]:
    """(IP, port) of every TCP socket in LISTEN state held by `pids`, read from /proc (Linux only).

    Lets tests prove a server group binds loopback only.
    """
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:
            continue  # gone, or not ours to read
        inodes.update(link[len("socket:[") : -1] for link in links if link.startswith("socket:["))
    found: set[tuple[str, int]] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            # /proc prints the address as 32-bit words in host (little-endian) byte order.
            raw = b"".join(struct.pack("<I", int(hex_ip[i : i + 8], 16)) for i in range(0, len(hex_ip), 8))
            ip = ipaddress.ip_address(socket.inet_ntop(family, raw))
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # gRPC listens on ::ffff:127.0.0.1 for 127.0.0.1
            found.add((str(ip), int(hex_port, 16)))
    return found
