"""Settings of the monitoring loop: evaluation, drift policy, promotion gate, control API."""

from __future__ import annotations

from pathlib import Path

from tuneloop.platform.env.state import TUNELOOP_PORT, _home
from tuneloop.platform.env.vars import LOOPBACK, Var, _bool, _fraction, _names, _path, _positive

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
TUNELOOP_RETRAIN_LOOKBACK_S: Var[float] = Var(
    "TUNELOOP_RETRAIN_LOOKBACK_S",
    float,
    lambda: 7 * 86400.0,
    "How far back the retrain policy reads an alias's history each round (at least 24 h and the "
    "cool-down): drift evidence older than this counts toward no streak. Bounds a round's work as "
    "the history grows.",
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
