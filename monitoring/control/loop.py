"""One round of the monitoring loop per alias, and the thread that runs rounds on an interval.

A round evaluates the alias through the gateway (when an evaluation key is configured), checks its
recent prompts for drift against the prompts of its evaluation suites (`prompt_length` detector),
records both, and asks the drift policy whether a retrain is due. A due retrain is recorded as a
`retrain.due` event; submitting it is the retrain step's job (not wired here yet).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from tuneloop.monitoring import metrics
from tuneloop.monitoring.policy import DRIFT_CHECKED, PolicyDecision, RetrainPolicy, observations
from tuneloop.platform import settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tuneloop.monitoring.capture import CaptureStore
    from tuneloop.monitoring.drift import DriftResult
    from tuneloop.platform.registry import Registry

log = logging.getLogger(__name__)
RETRAIN_DUE = "retrain.due"
DRIFT_DETECTOR = "prompt_length"
RECENT_WINDOW = timedelta(days=1)


def adapter_of(registry: Registry, alias: str) -> str:
    ref = registry.aliases().get(alias)
    return ref.partition("@")[0] if ref else alias


def drift_check(
    registry: Registry, store: CaptureStore, alias: str, reference: Sequence[str], now: datetime | None = None
) -> DriftResult:
    """Compare the alias's prompts of the last day with `reference` prompts; set gauges, record it."""
    from tuneloop.monitoring import drift

    now = now or datetime.now(UTC)
    recent = [r.prompt for r in store.recent(alias, since=now - RECENT_WINDOW)]
    result = drift.get(DRIFT_DETECTOR).check(list(reference), recent)
    nan = float("nan")
    metrics.DRIFT_SCORE.labels(alias, DRIFT_DETECTOR).set(nan if result.score is None else result.score)
    metrics.DRIFT_THRESHOLD.labels(alias, DRIFT_DETECTOR).set(
        nan if result.threshold is None else result.threshold
    )
    metrics.DRIFT_DETECTED.labels(alias, DRIFT_DETECTOR).set(1.0 if result.drifted else 0.0)
    metrics.DRIFT_LAST_CHECK.labels(alias, DRIFT_DETECTOR).set(now.timestamp())
    detail = {"alias": alias, "decision": result.decision, "detector": DRIFT_DETECTOR, "score": result.score}
    registry.add_event(adapter_of(registry, alias), DRIFT_CHECKED, result.explanation, detail)
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


def run_round(registry: Registry, store: CaptureStore) -> None:
    """Evaluate, check drift and consult the policy for every alias; one alias failing spares the rest."""
    from tuneloop.monitoring.evaluation.command import gateway_client
    from tuneloop.monitoring.evaluation.runner import run_suite
    from tuneloop.monitoring.evaluation.suite import suites_for

    key = settings.TUNELOOP_EVAL_KEY.get()
    for alias in sorted(registry.aliases()):
        metrics.declare_alias(alias)
        try:
            suites = suites_for(registry, alias)
            if key:
                client = gateway_client(key=key)
                for suite in suites:
                    run_suite(
                        registry, client, alias, suite, max_tokens=settings.TUNELOOP_EVAL_MAX_TOKENS.get()
                    )
            prompts = [ex.prompt or ex.key() for suite in suites for ex in suite.examples]
            drift_check(registry, store, alias, prompts)
            consider_retrain(registry, alias)
        except Exception:
            log.exception("monitoring round failed for alias %s", alias)


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
            run_round(self.registry, self.store)
            log.info("monitoring round took %.1fs", time.monotonic() - started)
