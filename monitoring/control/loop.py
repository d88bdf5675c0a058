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
from typing import TYPE_CHECKING

from tuneloop.monitoring import metrics
from tuneloop.monitoring.policy import DRIFT_CHECKED, PolicyDecision, RetrainPolicy, observations
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
RETRAIN_FAILED = "retrain.failed"  # a due retrain that could not be built or submitted
RECENT_WINDOW = timedelta(days=1)


def adapter_of(registry: Registry, alias: str) -> str:
    ref = registry.aliases().get(alias)
    return ref.partition("@")[0] if ref else alias


def record_check(registry: Registry, alias: str, result: DriftResult, now: datetime | None = None) -> None:
    """Set the drift gauges of one check and record it as a `drift.checked` event."""
    now = now or datetime.now(UTC)
    nan, name = float("nan"), result.detector
    metrics.DRIFT_SCORE.labels(alias, name).set(nan if result.score is None else result.score)
    metrics.DRIFT_THRESHOLD.labels(alias, name).set(nan if result.threshold is None else result.threshold)
    metrics.DRIFT_DETECTED.labels(alias, name).set(1.0 if result.drifted else 0.0)
    metrics.DRIFT_LAST_CHECK.labels(alias, name).set(now.timestamp())
    detail = {"alias": alias, "decision": result.decision, "detector": name, "score": result.score}
    registry.add_event(adapter_of(registry, alias), DRIFT_CHECKED, f"{alias}: {result.explanation}", detail)


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
    """The live version's latest judged answers against its first ones (`feedback_accuracy`); record it.

    The two sides never share a label: with fewer than two windows of labels the first ones are the
    reference and the rest, however few, the recent side (too few: not enough data)."""
    from tuneloop.monitoring import drift
    from tuneloop.monitoring.evaluation.feedback import judged_answers

    ref = registry.aliases()[alias]
    judged = judged_answers(store, alias, ref)
    window = settings.TUNELOOP_DRIFT_FEEDBACK_WINDOW.get()
    deploy_time = judged[:window]
    latest = judged[max(window, len(judged) - window) :]
    if latest:
        metrics.FEEDBACK_ACCURACY.labels(alias).set(sum(latest) / len(latest))
    # Fisher's exact test never exceeds alpha, so a window under the detector's default minimum (30)
    # is honoured rather than left at "not enough data" for ever.
    least = min(window, 30)
    detector = drift.get("feedback_accuracy", {"min_reference": least, "min_recent": least})
    result = detector.check(deploy_time, latest)
    record_check(registry, alias, result)
    return result


def consider_retrain(registry: Registry, alias: str, policy: RetrainPolicy | None = None) -> PolicyDecision:
    """Ask the drift policy about `alias` over its recorded history; record a due retrain."""
    policy = policy or RetrainPolicy.from_settings()
    adapter = adapter_of(registry, alias)
    decision = policy.decide(observations(registry.history(adapter), alias), datetime.now(UTC))
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
    from tuneloop.platform.errors import TuneloopError
    from tuneloop.train.data.splits import make_splits

    try:
        spec = last_spec(registry, registry.aliases()[alias])
        examples = make_splits(spec.data, spec.task).train
    except TuneloopError as exc:
        log.info("%s: training data not reachable (%s); drift reference: suite prompts", alias, exc)
        examples = [ex for suite in suites for ex in suite.examples]
    return [captured_prompt(ex) for ex in examples]


@dataclass
class RoundResult:
    """What one round did for one alias (the demo and the tests print and check it)."""

    alias: str
    checks: list[DriftResult] = field(default_factory=list)
    decision: PolicyDecision | None = None
    started_job: str | None = None
    gated: list[GateDecision | None] = field(default_factory=list)
    error: str | None = None


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
    from tuneloop.platform.rayjobs import JobsClient

    result = RoundResult(alias)
    if retrain.open_retrains(registry, alias):
        try:
            jobs = JobsClient(jobs_address)
        except TuneloopError as exc:  # Ray unreachable or no token: the retrain waits, the checks go on
            log.warning("%s: cannot follow its retrain: %s", alias, exc)
        else:
            result.gated = retrain.advance(registry, alias, jobs, client)
    suites = suites_for(registry, alias)
    if client is not None:
        for suite in suites:
            run_suite(registry, client, alias, suite, max_tokens=settings.TUNELOOP_EVAL_MAX_TOKENS.get())
    reference = reference_prompts(registry, alias, suites)
    for detector in settings.TUNELOOP_DRIFT_INPUT_DETECTORS.get():
        result.checks.append(drift_check(registry, store, alias, reference, detector=detector))
    result.checks.append(feedback_check(registry, store, alias))
    result.decision = consider_retrain(registry, alias)
    if result.decision.retrain:
        if retrain.open_retrains(registry, alias):
            log.info("%s: a retrain is already running; not starting another", alias)
        else:
            try:
                result.started_job = retrain.start(
                    registry, store, alias, result.decision.reason, address=jobs_address
                )
            except Exception as exc:  # no spec, unreadable data, too few examples, Ray or disk trouble
                result.error = f"retrain not started: {exc}"
                detail = {"alias": alias, "reason": str(exc)}
                registry.add_event(
                    adapter_of(registry, alias), RETRAIN_FAILED, f"{alias}: {result.error}", detail
                )
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
    """Runs `run_round` every `interval_s` seconds in a daemon thread until `stop()`."""

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
        while not self._stop.wait(self.interval_s):
            started = time.monotonic()
            try:
                run_round(self.registry, self.store)
            except Exception:  # the registry or the gateway key failing: the next round tries again
                log.exception("monitoring round failed")
            log.info("monitoring round took %.1fs", time.monotonic() - started)
