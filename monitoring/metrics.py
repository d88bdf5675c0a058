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


def exposition() -> bytes:
    """The text `/metrics` serves: this process's metrics, or with several gateway workers
    (prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR set before it was imported)
    every worker's, aggregated: counters and histograms summed, gauges by their `multiprocess_mode`."""
    from prometheus_client import generate_latest, multiprocess, values

    if values.ValueClass is values.MutexValue:  # single process
        return generate_latest(REGISTRY)
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return generate_latest(merged)


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
    multiprocess_mode="livesum",
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
    "Adapter versions loaded in the engine right now (with several workers: the most any worker holds).",
    registry=REGISTRY,
    multiprocess_mode="livemax",
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
    "1 while the engine answers and its resident adapters are loaded, else 0 (with several "
    "workers: 1 only while every worker sees it so).",
    registry=REGISTRY,
    multiprocess_mode="livemin",
)


# -- the monitoring loop (evaluation, drift, retraining)
# Set by the evaluation and drift jobs and the drift policy (monitoring/), never by the gateway; the
# control plane serves them. Label values stay bounded by configuration, never by traffic: `alias`
# is an alias the loop watches, `version` a registry ref (`adapter@N`), `suite` and `metric` an
# evaluation suite and one of its metric names from the alias's config, `detector` a registered
# drift detector name (monitoring/drift: embedding, prompt_length, oov_rate, eval_score,
# feedback_accuracy), `reason` one of RETRAIN_REJECT_REASONS.

EVAL_LABELS = ("alias", "version", "suite", "metric")
DRIFT_LABELS = ("alias", "detector")


# Why a retrained candidate did not go live: the only values the `reason` label takes.
RETRAIN_REJECT_REASONS = (
    "not_better",  # it did not beat the live version on the same test data
    "evaluation_failed",  # it could not be evaluated, so it cannot be compared
    "unservable",  # its method cannot be served by this deployment's engines
    "feedback_only",  # nothing but feedback to judge it on, and TUNELOOP_GATE_ALLOW_FEEDBACK_ONLY is off
    "superseded",  # the alias moved to another version while the gate evaluated
)

EVAL_SCORE = Gauge(
    "tuneloop_eval_score",
    "Latest evaluation score of a version of an alias on one suite and metric (0-1, higher is better).",
    EVAL_LABELS,
    registry=REGISTRY,
)
DRIFT_SCORE = Gauge(
    "tuneloop_drift_score",
    "Latest statistic of a drift detector for an alias (compared with tuneloop_drift_threshold); "
    "NaN when the last check had not enough data.",
    DRIFT_LABELS,
    registry=REGISTRY,
)
DRIFT_THRESHOLD = Gauge(
    "tuneloop_drift_threshold",
    "Value tuneloop_drift_score is compared with to decide drift, by alias and detector; NaN when "
    "the last check had not enough data.",
    DRIFT_LABELS,
    registry=REGISTRY,
)
DRIFT_DETECTED = Gauge(
    "tuneloop_drift_detected",
    "1 if the latest check of a drift detector found drift for an alias, else 0 (also 0 when it had "
    "not enough data to decide).",
    DRIFT_LABELS,
    registry=REGISTRY,
)
DRIFT_LAST_CHECK = Gauge(
    "tuneloop_drift_last_check_timestamp_seconds",
    "Unix time of the latest check of a drift detector for an alias, whatever it decided.",
    DRIFT_LABELS,
    registry=REGISTRY,
)
FEEDBACK_ACCURACY = Gauge(
    "tuneloop_feedback_accuracy",
    "Share of recent user feedback on an alias's answers that marked them correct (0-1).",
    ("alias",),
    registry=REGISTRY,
)
RETRAINS_STARTED = Counter(
    "tuneloop_retrains_started_total",
    "Retraining jobs submitted for an alias by the drift policy or by hand.",
    ("alias",),
    registry=REGISTRY,
)
RETRAINS_SUCCEEDED = Counter(
    "tuneloop_retrains_succeeded_total",
    "Retraining jobs for an alias that finished and registered a candidate version (it may still be "
    "rejected).",
    ("alias",),
    registry=REGISTRY,
)
RETRAINS_FAILED = Counter(
    "tuneloop_retrains_failed_total",
    "Retraining jobs for an alias that failed or were stopped before registering a candidate.",
    ("alias",),
    registry=REGISTRY,
)
RETRAINS_REJECTED = Counter(
    "tuneloop_retrains_rejected_total",
    "Retrained candidates for an alias that did not go live, by reason (RETRAIN_REJECT_REASONS).",
    ("alias", "reason"),
    registry=REGISTRY,
)
PROMOTIONS = Counter(
    "tuneloop_promotions_total",
    "Times the registry pointed an alias at a new version (the gateways follow with "
    "tuneloop_alias_switches_total).",
    ("alias",),
    registry=REGISTRY,
)
ROLLBACKS = Counter(
    "tuneloop_rollbacks_total",
    "Times the registry pointed an alias back at its previous version.",
    ("alias",),
    registry=REGISTRY,
)


def declare_alias(alias: str) -> None:
    """Export the loop's counters for `alias` at 0 before their first event.

    A labelled counter has no series until its first increment, and `increase()` cannot see a
    series that starts at 1, so the first retrain or rollback of an alias would never alert. Call
    this when the loop starts watching an alias.
    """
    for counter in (RETRAINS_STARTED, RETRAINS_SUCCEEDED, RETRAINS_FAILED, PROMOTIONS, ROLLBACKS):
        counter.labels(alias)
    for reason in RETRAIN_REJECT_REASONS:
        RETRAINS_REJECTED.labels(alias, reason)
