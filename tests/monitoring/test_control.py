"""The control API on a real uvicorn server on a free loopback port (health, metrics, alert webhook),
and the loop's per-alias round on a real registry and capture store."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from helpers.servers import app_in_thread
from sqlalchemy import update

from tuneloop.monitoring import metrics
from tuneloop.monitoring.capture import CaptureStore, FeedbackIn, RequestRecord
from tuneloop.monitoring.control import create_app
from tuneloop.monitoring.control.loop import (
    RETRAIN_FAILED,
    check_alias,
    consider_retrain,
    feedback_check,
    run_round,
)
from tuneloop.monitoring.policy import DRIFT_ALERT, DRIFT_CHECKED, RETRAIN_STARTED, aware
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import Event

TOKEN = "control-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def control_url(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TUNELOOP_RETRAIN_SUSTAIN", "2")
    with app_in_thread(create_app(registry, token=TOKEN)) as url:
        yield url


def test_health_and_metrics(control_url: str) -> None:
    assert httpx.get(f"{control_url}/health").json() == {"status": "ok"}
    text = httpx.get(f"{control_url}/metrics").text
    assert "tuneloop_eval_score" in text and "tuneloop_retrains_started_total" in text


def firing(alias: str) -> dict[str, object]:
    return {"status": "firing", "labels": {"alertname": "TuneloopDrift", "alias": alias}}


def test_alert_webhook_records_and_asks_the_policy(control_url: str, registry: Registry) -> None:
    body = {"version": "4", "status": "firing", "alerts": [firing("support"), firing("unknown")]}
    first = httpx.post(f"{control_url}/v1/alerts", json=body, headers=AUTH)
    assert first.status_code == 200 and first.json() == {"recorded": 1, "ignored": 1, "retrain_due": []}
    second = httpx.post(f"{control_url}/v1/alerts", json={"alerts": [firing("support")]}, headers=AUTH)
    assert second.json()["retrain_due"] == ["support"]  # sustained: 2 firing alerts with sustain=2
    kinds = [e.kind for e in registry.history("support")]
    assert kinds.count(DRIFT_ALERT) == 2 and kinds[-1] == "retrain.due"


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"alerts": [{"status": "maybe", "labels": {}}]}'])
def test_bad_webhook_body_is_400(control_url: str, body: bytes) -> None:
    response = httpx.post(f"{control_url}/v1/alerts", content=body, headers=AUTH)
    assert response.status_code == 400 and "Alertmanager" in response.json()["error"]["message"]


# --- the loop's checks, without the server -------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> CaptureStore:
    return CaptureStore(f"sqlite:///{tmp_path / 'c.db'}")


def judged(store: CaptureStore, version: str, verdicts: list[bool], start: int = 0) -> None:
    """One captured answer of `version` per verdict, labelled good or bad, in this order."""
    ids = [f"r{start + i}" for i in range(len(verdicts))]
    store.add_requests([RequestRecord(i, "support", version, f"q {i}", "a", 0.1, key_id=1) for i in ids])
    for request_id, right in zip(ids, verdicts, strict=True):
        store.add_feedback(FeedbackIn(request_id=request_id, label="good" if right else "bad"), key_id=1)


def concept_drift(store: CaptureStore, version: str = "support@1") -> None:
    """Mostly right at first (28 of 30), mostly wrong lately (6 of 30)."""
    judged(store, version, [True] * 28 + [False] * 2 + [True] * 6 + [False] * 24)


def test_feedback_check_finds_concept_drift_and_records_it(
    registry: Registry, store: CaptureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """support@1 has no accuracy measured at promotion: its first 30 labels are the reference."""
    monkeypatch.setenv("TUNELOOP_DRIFT_FEEDBACK_WINDOW", "30")
    concept_drift(store)
    judged(store, "support@2", [False] * 60, start=100)  # another version's labels do not count
    result = feedback_check(registry, store, "support")
    assert result.decision == "drift" and (result.n_reference, result.n_recent) == (30, 30)
    assert result.detector == "feedback_cusum" and result.details["onset_index"] == 6
    assert result.details["recent_error_rate"] == 1.0  # the 24 labels since the change point
    event = registry.history("support")[-1]
    assert event.kind == DRIFT_CHECKED
    detail = event.detail or {}
    assert (detail["decision"], detail["detector"], detail["score"]) == (
        "drift",
        "feedback_cusum",
        result.score,
    )
    assert detail["reference"] == "its first 30 judged answers"
    # The onset is the time of the first wrong answer of the run (the 37th label).
    feedback_times = [f.created_at for _, f in store.with_feedback("support")]
    assert datetime.fromisoformat(detail["onset"]) == aware(feedback_times[36])
    accuracy = metrics.REGISTRY.get_sample_value("tuneloop_feedback_accuracy", {"alias": "support"})
    assert accuracy == pytest.approx(6 / 30)


def test_feedback_check_starts_from_the_accuracy_measured_at_promotion(
    store: CaptureStore, tmp_path: Path
) -> None:
    """No label from before the drift is needed: the version's test split accuracy is the reference,
    and a partial drift (a quarter of right answers changed) is found and stays found as labels come."""
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    version = registry.add_version(
        "support",
        base_model="m",
        method="lora",
        store=lambda n: f"mem://{n}",
        metrics={"exact_match": 0.8},
        manifest={"data": {"test": 100}},
    )
    registry.promote("support", version.ref)
    rng = random.Random(3)
    decisions = []
    for batch in range(8):  # accuracy 0.8 x 0.75 = 0.6 from the first label on
        judged(store, "support@1", [rng.random() < 0.6 for _ in range(25)], start=25 * batch)
        decisions.append(feedback_check(registry, store, "support").decision)
    first = decisions.index("drift")
    assert all(d == "drift" for d in decisions[first:]), decisions
    event = registry.history("support")[-1]
    assert event.detail["reference"] == "its job's test split (80/100 exact)"


def test_feedback_check_with_too_few_labels_is_not_enough_data(
    registry: Registry, store: CaptureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_DRIFT_FEEDBACK_WINDOW", "30")
    judged(store, "support@1", [True] * 30 + [False] * 5)  # 5 recent labels: the sides never overlap
    result = feedback_check(registry, store, "support")
    assert result.decision == "not_enough_data" and (result.n_reference, result.n_recent) == (30, 5)
    event = registry.history("support")[-1]
    assert (event.kind, event.detail["decision"]) == (DRIFT_CHECKED, "not_enough_data")


def test_a_round_checks_and_asks_the_policy_but_starts_nothing_before_drift_is_sustained(
    store: CaptureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELOOP_DRIFT_FEEDBACK_WINDOW", "30")
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    spec = {
        "base_model": "m",
        "method": {"name": "lora"},
        "data": {"train": str(tmp_path / "elsewhere" / "train.jsonl")},  # not reachable from here
        "output": {"adapter": "support"},
    }
    version = registry.add_version(
        "support", base_model="m", method="lora", store=lambda n: f"mem://{n}", manifest={"spec": spec}
    )
    registry.promote("support", version.ref)
    concept_drift(store)
    for streak in (1, 2):  # the default policy needs 3 drift checks in a row
        result = check_alias(registry, store, "support", client=None)
        assert result.error is None and result.started_job is None and result.gated == []
        assert [(c.detector, c.decision) for c in result.checks] == [
            ("prompt_length", "not_enough_data"),  # no training data and no suites: no reference
            ("feedback_cusum", "drift"),
        ]
        assert result.decision is not None and not result.decision.retrain
        assert (
            result.decision.streak == streak
            and f"{streak} time(s) in a row, 3 needed" in result.decision.reason
        )
    kinds = [e.kind for e in registry.history("support")]
    assert kinds.count(DRIFT_CHECKED) == 4
    assert RETRAIN_STARTED not in kinds and "retrain.due" not in kinds


def test_a_due_retrain_that_cannot_be_built_is_a_recorded_failure(
    registry: Registry, store: CaptureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """support@1 was imported (no job spec): the policy asks for a retrain, which cannot be built."""
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELOOP_DRIFT_FEEDBACK_WINDOW", "30")
    monkeypatch.setenv("TUNELOOP_RETRAIN_SUSTAIN", "1")
    concept_drift(store)
    before = metrics.REGISTRY.get_sample_value("tuneloop_retrains_failed_total", {"alias": "support"}) or 0.0
    result = check_alias(registry, store, "support", client=None)
    assert result.decision is not None and result.decision.retrain and result.started_job is None
    assert result.error is not None and "no recorded job spec" in result.error
    event = registry.history("support")[-1]
    assert event.kind == RETRAIN_FAILED and "no recorded job spec" in event.detail["reason"]
    after = metrics.REGISTRY.get_sample_value("tuneloop_retrains_failed_total", {"alias": "support"})
    assert after == before + 1
    assert not (tmp_path / "home" / "retrains").exists()  # nothing half-written was left


def test_the_input_detectors_of_a_round_are_configurable(
    registry: Registry, store: CaptureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELOOP_DRIFT_INPUT_DETECTORS", "oov_rate, prompt_length")
    result = check_alias(registry, store, "support", client=None)
    assert [c.detector for c in result.checks] == ["oov_rate", "prompt_length", "feedback_cusum"]
    checked = [e.detail["detector"] for e in registry.history("support") if e.kind == DRIFT_CHECKED]
    assert checked == ["oov_rate", "prompt_length", "feedback_cusum"]
    monkeypatch.setenv("TUNELOOP_DRIFT_INPUT_DETECTORS", "no_such_detector")
    failed = run_round(registry, store)[0]  # one alias's bad configuration is reported, not raised
    assert failed.error is not None and "unknown drift detector 'no_such_detector'" in failed.error


def test_evaluation_is_due_once_per_interval_per_live_version(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, timedelta

    from tuneloop.monitoring.control.loop import evaluation_due
    from tuneloop.monitoring.evaluation.suite import Suite

    monkeypatch.setenv("TUNELOOP_EVAL_INTERVAL_S", "3600")
    suites = [Suite("golden", (), "g.jsonl")]
    assert evaluation_due(registry, "support", suites)  # never evaluated
    registry.add_evaluation("support@1", "feedback", {"exact_match": 1.0})  # a gate's, not a suite's
    assert evaluation_due(registry, "support", suites)
    registry.add_evaluation("support@1", "golden", {"exact_match": 1.0})
    assert not evaluation_due(registry, "support", suites)
    later = datetime.now(UTC) + timedelta(hours=1, seconds=1)
    assert evaluation_due(registry, "support", suites, now=later)


def test_the_policy_reads_only_its_lookback_of_the_history(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drift seen before the lookback counts toward no streak; the same evidence within it does."""
    monkeypatch.setenv("TUNELOOP_RETRAIN_SUSTAIN", "3")
    monkeypatch.setenv("TUNELOOP_RETRAIN_LOOKBACK_S", str(2 * 86400))
    drift = {"alias": "support", "decision": "drift", "detector": "feedback_accuracy"}
    for _ in range(3):
        registry.add_event("support", DRIFT_CHECKED, "support: drift", drift)
    with registry.transaction() as session:
        session.execute(
            update(Event)
            .where(Event.kind == DRIFT_CHECKED)
            .values(created_at=datetime.now(UTC) - timedelta(days=3))
        )
    assert consider_retrain(registry, "support").retrain is False
    assert len(registry.history("support", kinds=[DRIFT_CHECKED])) == 3  # still recorded, only not read
    monkeypatch.setenv("TUNELOOP_RETRAIN_LOOKBACK_S", str(4 * 86400))
    assert consider_retrain(registry, "support").retrain is True
