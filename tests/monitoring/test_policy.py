"""The drift policy: sustained drift, cool-down, daily budget, and what resets the streak."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tuneloop.monitoring.policy import (
    DRIFT_ALERT,
    DRIFT_CHECKED,
    PROMOTED,
    RETRAIN_FAILED,
    RETRAIN_FINISHED,
    RETRAIN_STARTED,
    Observation,
    RetrainPolicy,
    drift_streak,
    observations,
)
from tuneloop.platform.registry import Registry

T0 = datetime(2025, 1, 1, tzinfo=UTC)
POLICY = RetrainPolicy(sustain=3, cooldown=timedelta(hours=6), daily_budget=2)


def checks(*decisions: str, start: datetime = T0) -> list[Observation]:
    return [Observation(DRIFT_CHECKED, start + timedelta(hours=i), d) for i, d in enumerate(decisions)]


def test_retrains_only_when_drift_is_sustained() -> None:
    assert not POLICY.decide(checks("drift", "drift"), T0 + timedelta(hours=3)).retrain
    decision = POLICY.decide(checks("drift", "drift", "drift"), T0 + timedelta(hours=3))
    assert decision.retrain and decision.streak == 3


def test_no_drift_resets_the_streak() -> None:
    history = checks("drift", "drift", "no_drift", "drift", "drift")
    decision = POLICY.decide(history, T0 + timedelta(hours=5))
    assert not decision.retrain and decision.streak == 2
    assert "2 time(s)" in decision.reason


def test_not_enough_data_neither_counts_nor_resets() -> None:
    history = checks("drift", "not_enough_data", "drift", "not_enough_data", "drift")
    assert drift_streak(history) == 3
    assert drift_streak(checks("not_enough_data", "not_enough_data", "not_enough_data")) == 0
    assert POLICY.decide(history, T0 + timedelta(hours=5)).retrain


def test_firing_alerts_count_and_a_resolved_alert_resets_its_own_streak() -> None:
    def alert(hours: int, status: str, name: str = "TuneloopDrift") -> Observation:
        return Observation(DRIFT_ALERT, T0 + timedelta(hours=hours), status, name)

    history = [alert(0, "firing"), alert(1, "firing"), alert(2, "firing")]
    assert drift_streak(history) == 3
    assert POLICY.decide(history, T0 + timedelta(hours=4)).retrain
    # A resolved alert ends its own streak only: another alert's and the checks' go on.
    mixed = [*history, alert(3, "firing", "Other"), alert(4, "resolved"), *checks("drift", start=T0)]
    assert drift_streak(mixed) == 1


def test_each_detector_keeps_its_own_streak() -> None:
    """A concept drift leaves prompt lengths alone: their no_drift must not erase the feedback drift."""
    history = []
    for hour in range(3):
        at = T0 + timedelta(hours=hour)
        history += [
            Observation(DRIFT_CHECKED, at, "no_drift", "prompt_length"),
            Observation(DRIFT_CHECKED, at, "drift", "feedback_accuracy"),
        ]
    assert drift_streak(history) == 3
    assert POLICY.decide(history, T0 + timedelta(hours=3)).retrain
    mixed = [Observation(DRIFT_CHECKED, T0, "drift", "oov_rate"), *history[:4]]
    assert drift_streak(mixed) == 2  # oov_rate 1, feedback_accuracy 2: the longest run counts


def test_cool_down_after_a_retrain() -> None:
    started = Observation(RETRAIN_STARTED, T0 + timedelta(hours=3))
    history = [
        *checks("drift", "drift", "drift"),
        started,
        *checks("drift", "drift", "drift", start=T0 + timedelta(hours=4)),
    ]
    soon = POLICY.decide(history, T0 + timedelta(hours=7))
    assert not soon.retrain and "cooling down" in soon.reason
    later = POLICY.decide(history, T0 + timedelta(hours=9, minutes=1))
    assert later.retrain


def test_a_started_retrain_resets_the_streak() -> None:
    history = [*checks("drift", "drift", "drift"), Observation(RETRAIN_STARTED, T0 + timedelta(hours=3))]
    decision = POLICY.decide(history, T0 + timedelta(days=2))
    assert not decision.retrain and decision.streak == 0


def test_daily_budget() -> None:
    policy = RetrainPolicy(sustain=1, cooldown=timedelta(0), daily_budget=2)
    history = [
        Observation(RETRAIN_STARTED, T0),
        Observation(RETRAIN_STARTED, T0 + timedelta(hours=1)),
        *checks("drift", start=T0 + timedelta(hours=2)),
    ]
    spent = policy.decide(history, T0 + timedelta(hours=3))
    assert not spent.retrain and "budget" in spent.reason
    assert policy.decide(history, T0 + timedelta(hours=24, minutes=1)).retrain  # the first one aged out
    assert not RetrainPolicy(sustain=1, daily_budget=0).decide(checks("drift"), T0).retrain


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="sustain=0"):
        RetrainPolicy(sustain=0)


def test_reads_the_history_from_registry_events(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    registry.add_version("support", base_model="m", method="lora", store=lambda n: f"mem://{n}")
    registry.promote("support", "support@1")
    for decision in ("drift", "drift", "drift"):
        registry.add_event("support", DRIFT_CHECKED, decision, {"alias": "support", "decision": decision})
    registry.add_event("support", DRIFT_CHECKED, "other alias", {"alias": "other", "decision": "no_drift"})
    history = observations(registry.history("support"), "support")
    assert [o.kind for o in history] == [PROMOTED, DRIFT_CHECKED, DRIFT_CHECKED, DRIFT_CHECKED]
    assert [o.value for o in history[1:]] == ["drift", "drift", "drift"]
    # Registry timestamps come back naive from SQLite; the policy treats them as UTC.
    assert POLICY.decide(history, datetime.now(UTC)).retrain


def test_a_promotion_resets_every_streak() -> None:
    history = [*checks("drift", "drift"), Observation(PROMOTED, T0 + timedelta(hours=2))]
    assert drift_streak(history) == 0
    assert drift_streak([*history, *checks("drift", start=T0 + timedelta(hours=3))]) == 1


def test_promotions_of_the_adapter_are_read_from_the_registry(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    for _ in range(2):
        registry.add_version("support", base_model="m", method="lora", store=lambda n: f"mem://{n}")
    registry.promote("support", "support@1")
    for _ in range(3):
        registry.add_event("support", DRIFT_CHECKED, "drift", {"alias": "support", "decision": "drift"})
    registry.promote("support", "support@2")
    history = observations(registry.history("support"), "support")
    assert [o.kind for o in history][-1] == PROMOTED and drift_streak(history) == 0


def test_a_failed_retrain_spends_no_budget_and_is_retried_with_backoff() -> None:
    policy = RetrainPolicy(
        sustain=1, cooldown=timedelta(hours=6), daily_budget=1, backoff=timedelta(minutes=5)
    )
    at = T0 + timedelta(hours=1)

    def failed(minutes: int) -> list[Observation]:
        start = at + timedelta(minutes=minutes)
        return [
            Observation(RETRAIN_STARTED, start, "failed"),
            Observation(RETRAIN_FAILED, start + timedelta(seconds=30)),
        ]

    history = [*checks("drift"), *failed(0), *checks("drift", start=at + timedelta(minutes=1))]
    # The failed retrain reset nothing: the streak goes on, and neither cool-down nor budget applies...
    assert drift_streak(history) == 2
    waiting = policy.decide(history, at + timedelta(minutes=3))
    assert not waiting.retrain and "retrying after 1 failed retrain(s)" in waiting.reason
    # ...only the back-off: 5 minutes after the first failure, 10 after the second.
    assert policy.decide(history, at + timedelta(minutes=6)).retrain
    twice = [*history, *failed(6)]
    assert not policy.decide(twice, at + timedelta(minutes=15)).retrain
    assert policy.decide(twice, at + timedelta(minutes=17)).retrain
    # A retrain that trained spends the budget and starts the cool-down as before.
    trained = [*twice, Observation(RETRAIN_STARTED, at + timedelta(minutes=20)), *checks("drift", start=at)]
    assert "cooling down" in policy.decide(trained, at + timedelta(minutes=30)).reason


def test_failed_retrains_are_read_from_the_registry(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    registry.add_version("support", base_model="m", method="lora", store=lambda n: f"mem://{n}")
    for job, candidate in (("j1", None), ("j2", "support@2")):
        registry.add_event("support", RETRAIN_STARTED, "s", {"alias": "support", "job_id": job})
        detail = {"alias": "support", "job_id": job, "status": "FAILED", "candidate": candidate}
        registry.add_event("support", RETRAIN_FINISHED, "f", detail)
    registry.add_event("support", RETRAIN_FAILED, "could not build", {"alias": "support"})
    seen = [(o.kind, o.value) for o in observations(registry.history("support"), "support")]
    assert seen == [
        (RETRAIN_STARTED, "failed"),
        (RETRAIN_FAILED, ""),
        (RETRAIN_STARTED, ""),
        (RETRAIN_FAILED, ""),
    ]
