"""Settings of capture: sampled traffic and feedback (monitoring/capture)."""

from __future__ import annotations

from tuneloop.platform.env.state import _home
from tuneloop.platform.env.vars import Var, _bool, _fraction, _names, _positive

# -- capture of sampled traffic and feedback (monitoring/capture)


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
    _positive,
    lambda: 32_768,
    "Most characters of a captured prompt or answer that are redacted and stored; the rest is cut "
    "and the stored text ends with `…[truncated N chars]`.",
)
