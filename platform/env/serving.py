"""Settings of serving: the gateway and its engine (README "Serving")."""

from __future__ import annotations

import shlex
from pathlib import Path

from tuneloop.platform.env.state import _home
from tuneloop.platform.env.vars import Var, _bool, _choice, _names, _path, _positive, _unit_fraction

# -- serving (the gateway and its engine; README "Serving")
TUNELOOP_ENGINE_KV_CACHE_BYTES: Var[int] = Var(
    "TUNELOOP_ENGINE_KV_CACHE_BYTES",
    int,
    lambda: 128 * 2**20,
    "KV-cache size of the vLLM engine in bytes (vLLM-on-CPU cannot size it itself; see ENVIRONMENT.md).",
)
TUNELOOP_ENGINE_MAX_MODEL_LEN: Var[int] = Var(
    "TUNELOOP_ENGINE_MAX_MODEL_LEN",
    int,
    lambda: 1024,
    "Context length the engine serves (prompt + answer, tokens); longer prompts get a 400 naming it.",
)
TUNELOOP_ENGINE_DTYPE: Var[str] = Var(
    "TUNELOOP_ENGINE_DTYPE",
    str,
    lambda: "auto",
    "Weight dtype of the engine (auto, float32, bfloat16); small models answer better in float32.",
)
TUNELOOP_ENGINE_TENSOR_PARALLEL_SIZE: Var[int] = Var(
    "TUNELOOP_ENGINE_TENSOR_PARALLEL_SIZE",
    _positive,
    lambda: 1,
    "GPUs one engine shards the model over (vLLM --tensor-parallel-size); the Helm chart sets it to "
    "serving.gpusPerReplica.",
)
TUNELOOP_ENGINE_GPU_MEMORY_FRACTION: Var[float | None] = Var(
    "TUNELOOP_ENGINE_GPU_MEMORY_FRACTION",
    _unit_fraction,
    lambda: None,
    "Share of each GPU's memory the engine may take, 0 < f <= 1 (vLLM --gpu-memory-utilization); "
    "when set, vLLM sizes the KV cache from it and TUNELOOP_ENGINE_KV_CACHE_BYTES is not passed. "
    "Empty: the KV cache is TUNELOOP_ENGINE_KV_CACHE_BYTES (what a CPU needs).",
)
TUNELOOP_ENGINE_EXTRA_ARGS: Var[tuple[str, ...]] = Var(
    "TUNELOOP_ENGINE_EXTRA_ARGS",
    lambda raw: tuple(shlex.split(raw)),
    lambda: (),
    "More vLLM engine flags, shell-quoted (e.g. `--enforce-eager --max-num-batched-tokens 8192`); "
    "flags tuneloop sets itself (model, host, port, LoRA, KV cache, ...) are refused with the "
    "setting that owns them.",
)
TUNELOOP_SERVED_MODEL_NAME: Var[str] = Var(
    "TUNELOOP_SERVED_MODEL_NAME",
    str,
    lambda: "",
    "Name clients call the base model by and /v1/models lists (vLLM's --served-model-name); the "
    "`--model` string keeps working. Empty: the `--model` string.",
)
TUNELOOP_TOOL_CALL_PARSER: Var[str] = Var(
    "TUNELOOP_TOOL_CALL_PARSER",
    str,
    lambda: "",
    "vLLM tool-call parser for the base model's chat format (hermes, llama3_json, mistral, ...): the "
    "engine then runs with automatic tool choice. Empty: chat requests with `tools` are refused (400).",
)
TUNELOOP_ENGINE_START_TIMEOUT_S: Var[float] = Var(
    "TUNELOOP_ENGINE_START_TIMEOUT_S",
    float,
    lambda: 300.0,
    "Seconds the gateway waits for a (re)started engine to answer /health before trying again.",
)
TUNELOOP_MAX_LORA_RANK: Var[int] = Var(
    "TUNELOOP_MAX_LORA_RANK",
    int,
    lambda: 16,
    "Highest LoRA rank the engine accepts (vLLM --max-lora-rank; 8, 16, 32, 64, ...); "
    "`adapters import` refuses higher ranks.",
)
TUNELOOP_WORKERS: Var[int] = Var(
    "TUNELOOP_WORKERS",
    int,
    lambda: 1,
    "Gateway worker processes of one replica (`tuneloop serve --workers`), sharing its port and its one "
    "engine; each follows the registry and writes capture itself, and /metrics sums them all.",
)
TUNELOOP_IN_ENGINE: Var[bool] = Var(
    "TUNELOOP_IN_ENGINE",
    _bool,
    lambda: False,
    "Run the gateway inside the engine's own server (`tuneloop serve --in-engine`): no second process "
    "and no socket between them, the fastest on a small machine; one worker only, and nothing answers "
    "on the port while the engine restarts.",
)
TUNELOOP_ENGINE_MAX_LORAS: Var[int] = Var(
    "TUNELOOP_ENGINE_MAX_LORAS",
    int,
    lambda: 0,
    "Distinct adapters the engine batches at once (vLLM --max-loras); 0 derives it at start from the "
    "registry: one per adapter with a servable LoRA version on this base, at most the engine's batch size.",
)
TUNELOOP_ENGINE_LORA_RANK: Var[int] = Var(
    "TUNELOOP_ENGINE_LORA_RANK",
    int,
    lambda: 0,
    "The engine's LoRA rank (vLLM --max-lora-rank, padded to one of 8, 16, 32, 64, ...); 0 derives it at "
    "start from the highest rank stored for this base, at most TUNELOOP_MAX_LORA_RANK.",
)
TUNELOOP_MAX_RESIDENT_ADAPTERS: Var[int] = Var(
    "TUNELOOP_MAX_RESIDENT_ADAPTERS",
    int,
    lambda: 16,
    "Adapter versions a replica keeps loaded in its engine; beyond it the least recently used idle "
    "one is unloaded (never one with requests in flight).",
)
TUNELOOP_MAX_IN_FLIGHT: Var[int] = Var(
    "TUNELOOP_MAX_IN_FLIGHT",
    int,
    lambda: 64,
    "Completion requests one gateway proxies at once; more are answered 429 with Retry-After.",
)
TUNELOOP_MAX_BODY_BYTES: Var[int] = Var(
    "TUNELOOP_MAX_BODY_BYTES",
    lambda raw: _positive(raw),  # defined below; looked up when read
    lambda: 2**20,
    "Largest request body the gateway reads (bytes); a larger one is answered 413 as soon as it "
    "passes the limit, before the rest is read. Parsing holds the interpreter, so this bounds how "
    "long one request's JSON can delay all others (~50 ms per MiB on a busy core).",
)
TUNELOOP_FILES_MAX_BYTES: Var[int] = Var(
    "TUNELOOP_FILES_MAX_BYTES",
    lambda raw: _positive(raw),
    lambda: 32 * 2**20,
    "Largest file POST /v1/files accepts (bytes); a larger upload is answered 413 as soon as it passes "
    "the limit. Every line is validated on upload, so this also bounds the work one upload costs.",
)
TUNELOOP_FILES_MAX_PER_KEY: Var[int] = Var(
    "TUNELOOP_FILES_MAX_PER_KEY",
    lambda raw: _positive(raw),
    lambda: 100,
    "Files one API key may keep in the store at once (delete some to upload more).",
)
TUNELOOP_FINE_TUNING: Var[str] = Var(
    "TUNELOOP_FINE_TUNING",
    lambda raw: _choice(raw, ("all", "scoped", "admin", "off")),
    lambda: "all",
    "Which keys may use /v1/files and /v1/fine_tuning/jobs: `all` valid keys, `scoped` (admin keys and "
    "keys created with the `fine-tuning` scope), `admin` keys only, or `off` (the routes answer 403).",
)
TUNELOOP_FINE_TUNING_MAX_ACTIVE: Var[int] = Var(
    "TUNELOOP_FINE_TUNING_MAX_ACTIVE",
    lambda raw: _positive(raw),
    lambda: 2,
    "Fine-tuning jobs one key may have queued or running at once; one more is answered 429.",
)
TUNELOOP_MAX_PROMPTS: Var[int] = Var(
    "TUNELOOP_MAX_PROMPTS",
    lambda raw: _positive(raw),  # defined below; looked up when read
    lambda: 32,
    "Most prompts in one /v1/completions request (a list of texts or of token-id lists).",
)
TUNELOOP_MAX_PROMPT_LENGTH: Var[int] = Var(
    "TUNELOOP_MAX_PROMPT_LENGTH",
    lambda raw: _positive(raw),  # defined below; looked up when read
    lambda: 65_536,
    "Longest prompt: characters of a text prompt (of all a chat's message texts together), or "
    "token ids of a tokenised one.",
)
TUNELOOP_MAX_SEQUENCES: Var[int] = Var(
    "TUNELOOP_MAX_SEQUENCES",
    lambda raw: _positive(raw),  # defined below; looked up when read
    lambda: 64,
    "Most sequences one request may ask the engine for: `n` times the number of prompts.",
)
TUNELOOP_MAX_EMBED_PROMPT_LENGTH: Var[int] = Var(
    "TUNELOOP_MAX_EMBED_PROMPT_LENGTH",
    lambda raw: _positive(raw),  # defined below; looked up when read
    lambda: 16_384,
    "Longest prompt of a prompt-tuned or P-tuned version (characters, or token ids), checked before "
    "the gateway tokenises and embeds it (that work runs in the gateway process).",
)
TUNELOOP_AUTH_NEGATIVE_CACHE: Var[int] = Var(
    "TUNELOOP_AUTH_NEGATIVE_CACHE",
    lambda raw: _positive(raw),  # defined below; looked up when read
    lambda: 10_000,
    "Unknown API keys remembered (by hash, least recently seen dropped first) so a repeated bad key "
    "costs no registry lookup until the next registry change.",
)
TUNELOOP_AUTH_LOOKUPS: Var[int] = Var(
    "TUNELOOP_AUTH_LOOKUPS",
    lambda raw: _positive(raw),  # defined below; looked up when read
    lambda: 2,
    "Registry lookups of keys not yet in the replica's snapshot that may run at once; the worker "
    "threads the registry follower needs are never all taken by a flood of random keys.",
)
TUNELOOP_SHUTDOWN_GRACE_S: Var[float] = Var(
    "TUNELOOP_SHUTDOWN_GRACE_S",
    float,
    lambda: 10.0,
    "On SIGTERM the gateway stops accepting connections and lets requests in flight finish for up "
    "to this many seconds, then stops its engine; the whole stop is bounded by this plus 30 s.",
)
TUNELOOP_KEEP_ALIVE_S: Var[float] = Var(
    "TUNELOOP_KEEP_ALIVE_S",
    float,
    lambda: 75.0,
    "How long the gateway keeps an idle client connection open (seconds). Keep it above the idle "
    "timeout of any load balancer or client pool in front (60 s on most), so that side always closes "
    "first: a server that closes an idle connection can race a request being sent on it.",
)
TUNELOOP_REGISTRY_POLL_S: Var[float] = Var(
    "TUNELOOP_REGISTRY_POLL_S",
    float,
    lambda: 0.5,
    "How often the gateway checks the registry for promotions, rollbacks and new keys (seconds).",
)
TUNELOOP_CACHE_DIR: Var[Path] = Var(
    "TUNELOOP_CACHE_DIR",
    _path,
    lambda: _home() / "cache",
    "Local copies of stored versions the engine loads (fetched from the artifact store, checksummed).",
)
TUNELOOP_PROMPT_EMBEDS: Var[bool] = Var(
    "TUNELOOP_PROMPT_EMBEDS",
    _bool,
    lambda: True,
    "Serve prompt-tuned and P-tuned versions through vLLM prompt embeddings (engine flag "
    "--enable-prompt-embeds, LoRA restricted to TUNELOOP_LORA_TARGET_MODULES). Off: such versions "
    "are refused and LoRA may target any module vLLM supports.",
)
TUNELOOP_LORA_TARGET_MODULES: Var[tuple[str, ...]] = Var(
    "TUNELOOP_LORA_TARGET_MODULES",
    _names,
    lambda: ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "Comma-separated modules LoRA adapters may target while TUNELOOP_PROMPT_EMBEDS is on (vLLM "
    "--lora-target-modules; the default suits Llama-family models). vLLM silently ignores LoRA weights "
    "on other modules, so `adapters import`, `adapters promote` and the gateway refuse such adapters.",
)
TUNELOOP_METRICS_PUBLIC: Var[bool] = Var(
    "TUNELOOP_METRICS_PUBLIC",
    _bool,
    lambda: False,
    "Serve the gateway's /metrics and /metrics/engine without an admin key. Their labels name every "
    "alias, so leave it off unless only Prometheus can reach the gateway.",
)

TUNELOOP_TEST_WORKER_EXIT_AT_STEP: Var[int] = Var(
    "TUNELOOP_TEST_WORKER_EXIT_AT_STEP",
    int,
    lambda: 0,
    "Testing only (risky): in `tuneloop train`, the last Ray Train worker of a run that did not "
    "resume from a checkpoint exits abruptly at this optimizer step, to prove recovery from the "
    "last checkpoint. 0 (the default) turns it off; anything else logs a warning.",
)
