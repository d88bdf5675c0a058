"""One round of the monitoring loop per alias, and the thread that runs rounds on an interval.

A round, for each alias:

1. follows its open retrains (monitoring/retrain.py `advance`): a job that has ended is closed and
   its candidate goes through the gate, which promotes or rejects it;
2. evaluates the live version through the gateway on its suites (when TUNELOOP_EVAL_KEY is set);
3. checks drift and records each check as a `drift.checked` event with its gauges: the input
   detectors of TUNELOOP_DRIFT_INPUT_DETECTORS (`prompt_length` by default; the alias's prompts of
   the last day against the live version's training inputs, or its suites' prompts where the
   training data is not reachable) and `feedback_accuracy` (the live version's
   latest TUNELOOP_DRIFT_FEEDBACK_WINDOW judged answers against its first ones, i.e. its accuracy at
   deploy time: the concept-drift check);
4. asks the drift policy, and starts a retrain when one is due and none is open.

Every step is an event in the registry (`tuneloop adapters history ALIAS`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tuneloop.monitoring import metrics
from tuneloop.monitoring.policy import (
    DRIFT_CHECKED,
    RETRAIN_FAILED,
    PolicyDecision,
    RetrainPolicy,
    aware,
    observations,
)
from tuneloop.platform import settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from openai import OpenAI

    from tuneloop.monitoring.capture import CaptureStore
    from tuneloop.monitoring.drift import DriftResult
    from tuneloop.monitoring.evaluation.suite import Suite
    from tuneloop.monitoring.gate import GateDecision
    from tuneloop.platform.registry import Registry

log = logging.getLogger(__name__)
RETRAIN_DUE = "retrain.due"
RECENT_WINDOW = timedelta(days=1)


def record_check(
    registry: Registry,
    alias: str,
    result: DriftResult,
    now: datetime | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Set the drift gauges of one check and record it as a `drift.checked` event."""
    now = now or datetime.now(UTC)
    nan, name = float("nan"), result.detector
    metrics.DRIFT_SCORE.labels(alias, name).set(nan if result.score is None else result.score)
    metrics.DRIFT_THRESHOLD.labels(alias, name).set(nan if result.threshold is None else result.threshold)
    metrics.DRIFT_DETECTED.labels(alias, name).set(1.0 if result.drifted else 0.0)
    metrics.DRIFT_LAST_CHECK.labels(alias, name).set(now.timestamp())
    detail = {"alias": alias, "decision": result.decision, "detector": name, "score": result.score}
    registry.add_event(
        registry.adapter_of(alias),
        DRIFT_CHECKED,
        f"{alias}: {result.explanation}",
        {**detail, **(extra or {})},
    )


def drift_check(
    registry: Registry,
    store: CaptureStore,
    alias: str,
    reference: Sequence[str],
    now: datetime | None = None,
    detector: str = "prompt_length",
) -> DriftResult:
    """Compare the alias's prompts of the last day with `reference` prompts with an input detector
    (`prompt_length`, `oov_rate`, `embedding`); record it."""
    from tuneloop.monitoring import drift

    now = now or datetime.now(UTC)
    recent = [r.prompt for r in store.recent(alias, since=now - RECENT_WINDOW)]
    result = drift.get(detector).check(list(reference), recent)
    record_check(registry, alias, result, now)
    return result


def feedback_check(registry: Registry, store: CaptureStore, alias: str) -> DriftResult:
    """The concept-drift check: a CUSUM over the live version's judged answers, oldest first, against
    the accuracy it had when it was accepted (monitoring/drift/sequential.py); record it.

    The reference is what the version measured at promotion (monitoring/gate.py
    `promotion_reference`): the gate's data for a version the gate promoted, its job's test split
    otherwise. A version with neither (an imported one) is compared with its own first
    TUNELOOP_DRIFT_FEEDBACK_WINDOW judged answers. A drift decision records its change point, the
    time of the first label of the rise, as `onset`: the retrain step splits feedback there."""
    from tuneloop.monitoring import drift
    from tuneloop.monitoring.evaluation.feedback import judged_with_times
    from tuneloop.monitoring.gate import promotion_reference

    ref = registry.aliases()[alias]
    judged = judged_with_times(store, alias, ref)
    window = settings.TUNELOOP_DRIFT_FEEDBACK_WINDOW.get()
    labels = [verdict for _, verdict in judged]
    if labels:
        latest = labels[-window:]
        metrics.FEEDBACK_ACCURACY.labels(alias).set(sum(latest) / len(latest))
    found = promotion_reference(registry, ref)
    if found is not None:
        (reference, source), skip = found, 0
    else:
        skip = min(window, len(labels))
        reference, source = labels[:skip], f"its first {skip} judged answers"
    config = {
        "threshold": settings.TUNELOOP_DRIFT_CUSUM_THRESHOLD.get(),
        "shift": settings.TUNELOOP_DRIFT_CUSUM_SHIFT.get(),
        "min_reference": min(window, 20),
    }
    result = drift.get("feedback_cusum", config).check(reference, labels[skip:])
    extra: dict[str, Any] = {"reference": source}
    onset_index = result.details.get("onset_index")
    if result.drifted and isinstance(onset_index, int) and skip + onset_index < len(judged):
        extra["onset"] = aware(judged[skip + onset_index][0]).isoformat()
    record_check(registry, alias, result, extra=extra)
    return result


def consider_retrain(
    registry: Registry, alias: str, policy: RetrainPolicy | None = None, *, running: bool = False
) -> PolicyDecision:
    """Ask the drift policy about `alias` over its recorded history; record a due retrain, unless one
    is `running` already (the round then starts none, and the history stays readable)."""
    policy = policy or RetrainPolicy.from_settings()
    adapter = registry.adapter_of(alias)
    now = datetime.now(UTC)
    history = registry.history(adapter, since=policy.reads_from(now))
    decision = policy.decide(observations(history, alias), now)
    if decision.retrain and running:
        decision = PolicyDecision(False, "a retrain is already running", decision.streak)
    if decision.retrain:
        registry.add_event(adapter, RETRAIN_DUE, f"{alias}: {decision.reason}", {"alias": alias})
    log.info(
        "retrain policy for %s: %s (%s)", alias, "due" if decision.retrain else "not due", decision.reason
    )
    return decision


def reference_prompts(registry: Registry, alias: str, suites: Sequence[Suite]) -> list[str]:
    """What the live version was trained on (its training split's prompts, as captured); where that
    data is not reachable from here, the prompts of its evaluation suites."""
    from tuneloop.monitoring.evaluation.feedback import captured_prompt
    from tuneloop.monitoring.retrain import last_spec
    from tuneloop.platform.data.splits import make_splits
    from tuneloop.platform.errors import TuneloopError

    try:
        spec = last_spec(registry, registry.aliases()[alias])
        examples = make_splits(spec.data, spec.task).train
    except TuneloopError as exc:
        log.info("%s: training data not reachable (%s); drift reference: suite prompts", alias, exc)
        examples = [ex for suite in suites for ex in suite.examples]
    return [captured_prompt(ex) for ex in examples]


def evaluation_due(
    registry: Registry, alias: str, suites: Sequence[Suite], now: datetime | None = None
) -> bool:
    """Whether the live version of `alias` has gone TUNELOOP_EVAL_INTERVAL_S without an evaluation
    on one of `suites`: evaluating is the slow part of a round, the drift checks are cheap."""
    last = registry.last_evaluated(registry.aliases()[alias], [suite.name for suite in suites])
    interval = timedelta(seconds=settings.TUNELOOP_EVAL_INTERVAL_S.get())
    return last is None or (now or datetime.now(UTC)) - last >= interval


@dataclass
class RoundResult:
    """What one round did for one alias (the demo and the tests print and check it)."""

    alias: str
    checks: list[DriftResult] = field(default_factory=list)
    decision: PolicyDecision | None = None
    started_job: str | None = None
    gated: list[GateDecision | None] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> str:
        """One line for the log: each check's decision, the policy's, and what was started or gated."""
        parts = [f"{c.detector} {c.decision}" for c in self.checks]
        if self.decision is not None:
            parts.append("retrain due" if self.decision.retrain else "no retrain")
        if self.started_job:
            parts.append(f"started {self.started_job}")
        parts += [f"gate {g.action}" for g in self.gated if g is not None]
        if self.error:
            parts.append(f"error: {self.error}")
        return f"{self.alias}: " + ", ".join(parts)


def check_alias(
    registry: Registry,
    store: CaptureStore,
    alias: str,
    client: OpenAI | None,
    jobs_address: str | None = None,
) -> RoundResult:
    """One round for one alias (the module docstring's four steps)."""
    from tuneloop.monitoring import retrain
    from tuneloop.monitoring.evaluation.runner import run_suite
    from tuneloop.monitoring.evaluation.suite import suites_for
    from tuneloop.platform.errors import TuneloopError
    from tuneloop.platform.ray.client import JobsClient

    result = RoundResult(alias)
    if retrain.open_retrains(registry, alias):
        try:
            jobs = JobsClient(jobs_address)
        except TuneloopError as exc:  # Ray unreachable or no token: the retrain waits, the checks go on
            log.warning("%s: cannot follow its retrain: %s", alias, exc)
        else:
            result.gated = retrain.advance(registry, alias, jobs, client)
    suites = suites_for(registry, alias)
    if client is not None and evaluation_due(registry, alias, suites):
        for suite in suites:
            run_suite(registry, client, alias, suite, max_tokens=settings.TUNELOOP_EVAL_MAX_TOKENS.get())
    reference = reference_prompts(registry, alias, suites)
    for detector in settings.TUNELOOP_DRIFT_INPUT_DETECTORS.get():
        result.checks.append(drift_check(registry, store, alias, reference, detector=detector))
    result.checks.append(feedback_check(registry, store, alias))
    result.decision = consider_retrain(registry, alias, running=bool(retrain.open_retrains(registry, alias)))
    if result.decision.retrain:
        try:
            result.started_job = retrain.start(
                registry, store, alias, result.decision.reason, address=jobs_address
            )
        except Exception as exc:  # no spec, unreadable data, too few examples, Ray or disk trouble
            result.error = f"retrain not started: {exc}"
            detail = {"alias": alias, "reason": str(exc)}
            registry.add_event(registry.adapter_of(alias), RETRAIN_FAILED, f"{alias}: {result.error}", detail)
            metrics.RETRAINS_FAILED.labels(alias).inc()
            log.error("%s: %s", alias, result.error)
    return result


def run_round(registry: Registry, store: CaptureStore, jobs_address: str | None = None) -> list[RoundResult]:
    """`check_alias` for every alias; one alias failing (logged, and in its result) spares the rest."""
    from tuneloop.monitoring.evaluation.command import gateway_client

    key = settings.TUNELOOP_EVAL_KEY.get()
    client = gateway_client(key=key) if key else None
    results = []
    for alias in sorted(registry.aliases()):
        metrics.declare_alias(alias)
        try:
            results.append(check_alias(registry, store, alias, client, jobs_address))
        except Exception as exc:
            log.exception("monitoring round failed for alias %s", alias)
            results.append(RoundResult(alias, error=f"{type(exc).__name__}: {exc}"))
    return results


class Scheduler:
    """Runs `run_round` every `interval_s` seconds in a daemon thread until `stop()`; the first round
    starts at once. A round that takes longer than the interval is followed by the next one at once
    (rounds never overlap), and says so in the log."""

    def __init__(self, registry: Registry, store: CaptureStore, interval_s: float) -> None:
        self.registry, self.store, self.interval_s = registry, store, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneloop-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            started = time.monotonic()
            log.info("monitoring round started")
            try:
                results = run_round(self.registry, self.store)
            except Exception:  # the registry or the gateway key failing: the next round tries again
                log.exception("monitoring round failed")
                results = []
            took = time.monotonic() - started
            log.info(
                "monitoring round took %.1fs: %s",
                took,
                "; ".join(r.summary() for r in results) or "no aliases",
            )
            if took > self.interval_s:
                log.warning(
                    "round took %.0fs, longer than TUNELOOP_SCHEDULER_INTERVAL_S=%gs: the next starts now",
                    took,
                    self.interval_s,
                )
            wait = max(0.0, self.interval_s - took)
