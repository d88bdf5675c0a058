"""The promotion gate: a worse candidate is rejected, a better one promoted, every step recorded."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tuneloop.monitoring import metrics
from tuneloop.monitoring.gate import (
    GATE_EVENT,
    GateDecision,
    apply,
    compare,
    decide,
    promotion_reference,
    run_gate,
    sign_test,
)
from tuneloop.platform.data.formats import Example
from tuneloop.platform.registry import Registry


def pair(suite: str, live: list[float], candidate: list[float]) -> dict[str, object]:
    return {suite: compare(suite, live, candidate)}


def test_the_sign_test_matches_the_binomial_tail() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == 0.5**5
    # P(X >= 8 | n=10, p=1/2) = (45 + 10 + 1) / 1024
    assert abs(sign_test(8, 2) - 56 / 1024) < 1e-12
    assert sign_test(0, 10) == pytest.approx(1.0)


def test_a_candidate_better_on_new_ground_truth_by_a_paired_test_is_promoted() -> None:
    new = pair("feedback", [0.0] * 10 + [1.0] * 10, [1.0] * 20)  # wins 10 of 10 untied
    kept = pair("unchanged", [1.0] * 10, [1.0] * 10)
    decision = decide({**new, **kept})
    assert decision.promote, decision
    assert "10 better / 0 worse" in decision.reason and "sign test" in decision.rule


def test_a_higher_mean_that_chance_explains_is_not_better() -> None:
    # 3 wins against 1 loss: p = 5/16, far above alpha, though the mean went up.
    new = pair("feedback", [0, 0, 0, 1, 1], [1, 1, 1, 0, 1])
    decision = decide({**new, **pair("golden", [1.0], [1.0])})
    assert not decision.promote and decision.reject_reason == "not_better"
    assert "not significantly better" in decision.reason and "p=0.312" in decision.reason


def test_a_regression_on_unchanged_questions_is_rejected() -> None:
    new = pair("feedback", [0.0] * 10, [1.0] * 10)
    kept = pair("unchanged", [1.0] * 10, [1.0] * 8 + [0.0] * 2)
    decision = decide({**new, **kept}, tolerance=0.05)
    assert not decision.promote and "regressed where answers did not change" in decision.reason
    # Pooled with a golden set where the candidate gained as much, there is no regression left.
    golden = pair("golden", [0.0] * 2 + [1.0] * 8, [1.0] * 10)
    assert decide({**new, **kept, **golden}, tolerance=0.05).promote


def test_feedback_alone_cannot_promote_unless_allowed() -> None:
    new = pair("feedback", [0.0] * 10, [1.0] * 10)
    refused = decide(new)
    assert not refused.promote and refused.reject_reason == "feedback_only"
    assert decide(new, allow_feedback_only=True).promote


def test_missing_scores_cannot_be_compared_and_nothing_live_promotes() -> None:
    failed = decide(pair("golden", [1.0], [1.0]))
    assert not failed.promote and failed.reject_reason == "evaluation_failed"
    assert decide({}, live=False).promote  # nothing live yet


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    # These versions have no stored artifacts: with LoRA unrestricted on the engines, promotion's
    # servability check needs none (a restricted engine would fetch and check the weights).
    monkeypatch.setenv("TUNELOOP_PROMPT_EMBEDS", "0")
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    for _ in range(3):
        reg.add_version("support", base_model="m", method="lora", store=lambda n: f"mem://{n}")
    reg.promote("support", "support@1")
    return reg


def test_apply_through_the_real_registry(registry: Registry) -> None:
    apply(registry, "support", "support@2", GateDecision(False, "worse", "not_better"))
    assert registry.get_version("support@2").status == "rejected"
    assert registry.aliases()["support"] == "support@1"
    apply(registry, "support", "support@3", GateDecision(True, "better"))
    assert registry.aliases()["support"] == "support@3"
    kinds = [e.kind for e in registry.history("support")]
    assert kinds[-4:] == [GATE_EVENT, "version.rejected", "alias.promoted", GATE_EVENT]


def gateway_where(answers: dict[str, str]) -> OpenAI:
    """A scripted gateway: each model answers every prompt with its fixed text."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        choice = {"index": 0, "text": answers[body["model"]], "logprobs": None, "finish_reason": "stop"}
        out = {"id": "x", "object": "text_completion", "created": 0, "model": body["model"]}
        out["choices"] = [choice]
        return httpx.Response(200, json=out)

    http = httpx.Client(transport=httpx.MockTransport(handle))
    return OpenAI(base_url="http://gw.test/v1", api_key="k", http_client=http, max_retries=0)


def test_run_gate_scores_both_versions_and_rejects_the_worse(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Registry-only versions (no artifact): skip the LoRA-target check that reads stored weights.
    monkeypatch.setenv("TUNELOOP_PROMPT_EMBEDS", "0")
    recent = [Example(format="prompt_completion", line=1, prompt="capital?", completion="Paris")]
    client = gateway_where({"support@1": "Paris", "support@2": "Lyon", "support@3": "Paris"})
    before = (
        metrics.REGISTRY.get_sample_value(
            "tuneloop_retrains_rejected_total", {"alias": "support", "reason": "not_better"}
        )
        or 0.0
    )
    decision = run_gate(registry, client, "support", "support@2", recent=recent, golden=recent)
    assert not decision.promote and decision.reject_reason == "not_better"
    assert registry.get_version("support@2").status == "rejected"
    after = metrics.REGISTRY.get_sample_value(
        "tuneloop_retrains_rejected_total", {"alias": "support", "reason": "not_better"}
    )
    assert after == before + 1
    evaluations = [e for e in registry.history("support") if e.kind == "evaluation"]
    assert {e.message for e in evaluations} == {
        f"support@{n} on {suite}" for n in (1, 2) for suite in ("feedback", "golden")
    }


def test_an_unservable_candidate_is_rejected_before_any_scoring(registry: Registry) -> None:
    registry.add_version("support", base_model="m", method="ia3", store=lambda n: f"mem://{n}")
    client = gateway_where({})  # any request would fail: the gate must not send one
    decision = run_gate(registry, client, "support", "support@4", recent=[], golden=[])
    assert not decision.promote and decision.reject_reason == "unservable"
    assert "ia3" in decision.reason
    assert registry.get_version("support@4").status == "rejected"
    assert registry.aliases()["support"] == "support@1"


def test_the_gate_records_both_numbers_the_rule_and_the_promoted_baseline(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_PROMPT_EMBEDS", "0")
    questions = [f"q{i}?" for i in range(8)]
    recent = [
        Example(format="prompt_completion", line=i, prompt=q, completion="new")
        for i, q in enumerate(questions)
    ]
    unchanged = [
        Example(format="prompt_completion", line=i, prompt=f"u{i}?", completion="new") for i in (1, 2)
    ]
    client = gateway_where({"support@1": "old", "support@3": "new"})
    decision = run_gate(registry, client, "support", "support@3", recent=recent, unchanged=unchanged)
    assert decision.promote, decision
    assert registry.aliases()["support"] == "support@3"
    [event] = [e for e in registry.history("support") if e.kind == GATE_EVENT]
    detail = event.detail or {}
    assert detail["live"] == "support@1" and "sign test" in detail["rule"]
    assert detail["comparisons"]["feedback"]["wins"] == 8 and detail["comparisons"]["feedback"]["live"] == 0.0
    assert detail["baseline"] == {"metric": "exact_match", "correct": 10, "n": 10}
    reference, source = promotion_reference(registry, "support@3") or ([], "")
    assert reference == [True] * 10 and "gate data" in source


def test_the_gate_does_not_promote_over_an_alias_that_moved(registry: Registry) -> None:
    better = GateDecision(True, "better")
    registry.promote("support", "support@2")  # an operator, while the gate evaluated support@1
    done = apply(registry, "support", "support@3", better, compared_with="support@1")
    assert not done.promote and done.reject_reason == "superseded"
    assert registry.aliases()["support"] == "support@2"


def test_a_candidate_that_cannot_go_live_when_promoted_is_rejected_unservable(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With LoRA restricted on the engines, promotion checks the stored weights, which are missing here.
    monkeypatch.setenv("TUNELOOP_PROMPT_EMBEDS", "1")
    done = apply(registry, "support", "support@3", GateDecision(True, "better"), compared_with="support@1")
    assert not done.promote and done.reject_reason == "unservable"
    assert registry.aliases()["support"] == "support@1"
    assert registry.get_version("support@3").status == "rejected"
