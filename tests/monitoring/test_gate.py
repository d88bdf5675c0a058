"""The promotion gate: a worse candidate is rejected, a better one promoted, every step recorded."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tuneloop.monitoring import metrics
from tuneloop.monitoring.gate import GATE_EVENT, GateDecision, apply, decide, run_gate
from tuneloop.platform.registry import Registry
from tuneloop.train.data.formats import Example


def test_a_worse_candidate_is_rejected() -> None:
    decision = decide({"feedback": 0.60, "golden": 0.80}, {"feedback": 0.70, "golden": 0.80})
    assert not decision.promote and decision.reject_reason == "not_better"
    assert "0.6000 does not beat live 0.7000" in decision.reason


def test_a_better_candidate_is_promoted() -> None:
    decision = decide({"feedback": 0.80, "golden": 0.79}, {"feedback": 0.70, "golden": 0.80})
    assert decision.promote and "0.7000 -> 0.8000" in decision.reason


def test_better_on_new_data_but_worse_on_golden_is_rejected() -> None:
    decision = decide(
        {"feedback": 0.90, "golden": 0.70}, {"feedback": 0.70, "golden": 0.80}, golden_tolerance=0.05
    )
    assert not decision.promote and "golden set fell" in decision.reason


def test_a_tie_is_not_better_and_missing_scores_cannot_be_compared() -> None:
    assert not decide({"feedback": 0.7}, {"feedback": 0.7}).promote
    failed = decide({}, {"feedback": 0.7, "golden": 0.8})
    assert not failed.promote and failed.reject_reason == "evaluation_failed"
    assert decide({"feedback": 0.1}, None).promote  # nothing live yet


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
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
    assert kinds[-4:] == [GATE_EVENT, "version.rejected", GATE_EVENT, "alias.promoted"]


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
    assert not decision.promote
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
