"""Every Prometheus metric tuneloop exports, declared once.

Conventions (STYLE.md): a `tuneloop_` prefix, HELP text, a fixed label set per metric, counters end
in `_total`, time in seconds. They live in their own `REGISTRY`, so the gateway's `/metrics` serves
exactly these (vLLM's own `vllm:*` series stay on the engine and are proxied at `/metrics/engine`).

Label values are bounded: `alias` is an alias name or "" (a pinned version or the base model),
`version` is the engine-side `adapter@N` or "base", `endpoint` is `chat/completions` or
`completions`, `status` the HTTP status answered. Requests that never resolved to a model (a bad
key, an unknown name) carry alias="" and version="" so a client cannot invent label values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUEST_LABELS = ("endpoint", "alias", "version")
MODEL_LABELS = ("alias", "version")
BASE_VERSION = "base"

# Request latency spans tiny CPU models (tens of ms) to long generations (minutes).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "tuneloop_requests_total",
    "Completion requests answered by the gateway, by endpoint, alias, version and HTTP status.",
    (*REQUEST_LABELS, "status"),
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "tuneloop_request_duration_seconds",
    "Time from receiving a completion request to its last byte, by endpoint, alias and version.",
    REQUEST_LABELS,
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN_SECONDS = Histogram(
    "tuneloop_time_to_first_token_seconds",
    "Time from receiving a streaming request to its first generated token, by alias and version.",
    MODEL_LABELS,
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    "tuneloop_prompt_tokens_total",
    "Prompt tokens processed, as the engine counted them, by alias and version.",
    MODEL_LABELS,
    registry=REGISTRY,
)
GENERATION_TOKENS = Counter(
    "tuneloop_generation_tokens_total",
    "Tokens generated, as the engine counted them, by alias and version.",
    MODEL_LABELS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "tuneloop_requests_in_flight",
    "Completion requests being proxied right now, by alias and version.",
    MODEL_LABELS,
    registry=REGISTRY,
)
ADAPTER_LOADS = Counter(
    "tuneloop_adapter_loads_total",
    "Adapter versions loaded into the engine (result: ok or error), by adapter.",
    ("adapter", "result"),
    registry=REGISTRY,
)
ADAPTER_UNLOADS = Counter(
    "tuneloop_adapter_unloads_total",
    "Adapter versions unloaded from the engine (reason: evicted, retired), by adapter.",
    ("adapter", "reason"),
    registry=REGISTRY,
)
ADAPTER_LOAD_SECONDS = Histogram(
    "tuneloop_adapter_load_duration_seconds",
    "Time to make an adapter version resident: fetch from the artifact store (if not cached) and load.",
    ("adapter",),
    buckets=LOAD_BUCKETS,
    registry=REGISTRY,
)
ADAPTERS_RESIDENT = Gauge(
    "tuneloop_adapters_resident",
    "Adapter versions loaded in the engine right now.",
    registry=REGISTRY,
)
ALIAS_SWITCHES = Counter(
    "tuneloop_alias_switches_total",
    "Times the gateway switched an alias to another version after loading it (promotion, rollback).",
    ("alias",),
    registry=REGISTRY,
)
ENGINE_RESTARTS = Counter(
    "tuneloop_engine_restarts_total",
    "Times the gateway restarted its vLLM engine after it died or stopped answering.",
    registry=REGISTRY,
)
ENGINE_UP = Gauge(
    "tuneloop_engine_up",
    "1 while the engine answers and its resident adapters are loaded, else 0.",
    registry=REGISTRY,
)
