"""A real serving replica for tests: `tuneloop serve` as a subprocess, plus what its state needs.

The replica runs exactly as users run it (the console script, its own vLLM subprocess) in its own
process group on free 127.0.0.1 ports, with state under a private TUNELOOP_HOME. It is stopped by
its process group; the engines it started (each in a group of its own) are checked gone after.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from helpers.servers import LoopbackServer
from helpers.tiny_model import build_random_lora
from tuneloop.platform.adapters import import_adapter
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.procs import ManagedProcess, free_port
from tuneloop.platform.registry import Registry
from tuneloop.platform.settings import LOOPBACK, child_env

TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))


@dataclass
class Gateway(LoopbackServer):
    """A running replica; `engine_url` is its engine (tests only peek)."""

    engine_port: int
    home: Path
    env: dict[str, str]

    @property
    def engine_url(self) -> str:
        return f"http://{LOOPBACK}:{self.engine_port}"

    def engine_pids(self) -> list[int]:
        """PIDs of the vLLM engine the gateway runs now (a child of the gateway process)."""
        return [pid for pid in children(self.process.pid) if b"vllm.entrypoints" in _cmdline(pid)]

    def engine_headers(self) -> dict[str, str]:
        """The engine's API key, as only its owner can read it (/proc/<pid>/environ), for tests that peek."""
        for pid in self.engine_pids():
            for entry in _environ(pid):
                name, _, value = entry.partition(b"=")
                if name == b"VLLM_API_KEY":
                    return {"Authorization": f"Bearer {value.decode()}"}
        return {}


@dataclass
class Replica:
    """A test's view of a running replica: its keys, its registry, clients and metrics."""

    gateway: Gateway
    base: str
    keys: dict[str, str]
    registry: Registry
    engine_pids: set[int]

    def client(self, key: str = "bot") -> OpenAI:
        return OpenAI(base_url=self.gateway.base_url, api_key=self.keys[key], max_retries=0, timeout=60)

    def post(self, path: str, body: Any, key: str | None = "bot", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"{self.gateway.url}{path}", content=content, headers=headers, timeout=60, **kw)

    def engine_adapters(self) -> set[str]:
        models = httpx.get(
            f"{self.gateway.engine_url}/v1/models", headers=self.gateway.engine_headers(), timeout=10
        ).json()["data"]
        return {m["id"] for m in models if m.get("parent")}

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{self.gateway.url}/metrics", headers=self.auth("admin"), timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}


@dataclass
class Published:
    """A replica's state before it starts: TUNELOOP_HOME with its registry and artifact store."""

    home: Path
    work: Path  # scratch folder for the adapters' sources
    registry: Registry
    store: ArtifactStore

    def add(self, name: str, folder: Path) -> None:
        import_adapter(name, folder, registry=self.registry, store=self.store, max_lora_rank=16)


def publish_loras(
    base: Path, factory: pytest.TempPathFactory, prefix: str, seeds: Sequence[int], name: str = "bot"
) -> Published:
    """A fresh home holding versions NAME@1.. of random rank-8 LoRA adapters, one per seed."""
    home, work = factory.mktemp(f"{prefix}-home"), factory.mktemp(f"{prefix}-adapters")
    published = Published(
        home, work, Registry(f"sqlite:///{home / 'registry.db'}"), ArtifactStore(str(home / "artifacts"))
    )
    for number, seed in enumerate(seeds, 1):
        published.add(name, build_random_lora(base, work / f"{name}{number}", rank=8, seed=seed))
    return published


def state_env(home: Path) -> dict[str, str]:
    """The variables that put all tuneloop state under `home` (registry, artifacts, cache, logs)."""
    return {"TUNELOOP_HOME": str(home), "TUNELOOP_DB_URL": "", "TUNELOOP_ARTIFACTS": ""}


@contextmanager
def start_gateway(
    model: str,
    home: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    ready_timeout: float = 300.0,
    port: int | None = None,
    engine_port: int | None = None,
) -> Iterator[Gateway]:
    """`tuneloop serve --model MODEL` on free ports (or the given ones); yields once /ready answers 200."""
    port, engine_port = port or free_port(), engine_port or free_port()
    env = child_env(
        {
            **state_env(home),
            "TUNELOOP_ENGINE_PORT": str(engine_port),
            "TUNELOOP_ENGINE_DTYPE": "float32",
            "TUNELOOP_ENGINE_MAX_MODEL_LEN": "512",
            "TUNELOOP_ENGINE_KV_CACHE_BYTES": str(64 * 2**20),
            **(extra_env or {}),
        }
    )
    process = ManagedProcess(
        [TUNELOOP, "serve", "--model", model, "--port", str(port)],
        log_path=home / "gateway.log",
        health_url=f"http://{LOOPBACK}:{port}/ready",
        env=env,
        name="tuneloop-serve",
        ready_timeout=ready_timeout,
    )
    with process:
        yield Gateway(process=process, port=port, engine_port=engine_port, home=home, env=env)


def write_peft_like(dest: Path, base: Path, peft_type: str, tensors: Mapping[str, tuple[int, ...]]) -> Path:
    """A minimal adapter folder of another PEFT type (IA3, PROMPT_TUNING): config + random safetensors."""
    import numpy as np
    from safetensors.numpy import save_file

    dest.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": peft_type, "base_model_name_or_path": str(base), "task_type": "CAUSAL_LM"}
    (dest / "adapter_config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    save_file(
        {k: rng.standard_normal(s).astype(np.float32) for k, s in tensors.items()},
        str(dest / "adapter_model.safetensors"),
    )
    return dest


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from the parent field of /proc/<pid>/stat."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in {"Z", "X"} and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
