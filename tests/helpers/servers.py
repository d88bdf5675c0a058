"""Real servers for tests: a vLLM OpenAI server and a loopback Ray head, both via `procs.py`.

Both run in their own process group on free 127.0.0.1 ports and are stopped by that group (never by
name), so a failing test cannot leave an engine or a raylet behind. The settings come from
ENVIRONMENT.md: vLLM on the CPU needs an explicit KV-cache size and runs its engine in-process; the Ray
head is the package's own recipe (`tuneloop.platform.ray.cluster`: loopback mode, explicit token auth
with a private token file, a private short temp dir), so tests exercise what users run.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.platform.procs import ManagedProcess, free_port
from tuneloop.platform.ray.cluster import RayHead, ray_cli, running_head
from tuneloop.platform.settings import LOOPBACK
from tuneloop.serve.engine.launch import EngineConfig, engine_process

__all__ = [
    "RAY_CLI",
    "RayHead",
    "VllmServer",
    "listening_addresses",
    "stalled_server",
    "start_ray_head",
    "start_vllm",
]

RAY_CLI = ray_cli()


@dataclass
class LoopbackServer:
    """A server we started on 127.0.0.1: `url` is its root, `base_url` its OpenAI API (/v1)."""

    process: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@dataclass
class VllmServer(LoopbackServer):
    """A running vLLM OpenAI server; `model` is the served base model name."""

    model: str


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


def start_ray_head(
    log_dir: Path, *, num_cpus: int = 2, ready_timeout: float = 120.0
) -> AbstractContextManager[RayHead]:
    """A loopback head on free ports with token auth, started the way tuneloop starts every head."""
    return running_head(log_dir, num_cpus=num_cpus, num_gpus=0, ready_timeout=ready_timeout)


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


@contextmanager
def stalled_server() -> Iterator[str]:
    """A loopback address (as an http:// URL) that accepts connections and never answers: a stuck Ray
    head or database."""
    listener = socket.create_server((LOOPBACK, 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # kept open, never read from or written to
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


@contextmanager
def app_in_thread(app: Any) -> Iterator[str]:
    """An ASGI app served by uvicorn on a free loopback port in a thread of this process; its URL."""
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
