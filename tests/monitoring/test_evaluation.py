"""Evaluation suites through the official openai client, against a scripted OpenAI-compatible server.

The server is an httpx mock transport answering like the gateway does (vLLM's shapes, echo and
logprobs included), so these tests are fast; what they check is the client side: which requests a
suite sends, how answers and log-probabilities are scored, and what is recorded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tuneloop.monitoring import metrics
from tuneloop.monitoring.capture import CaptureStore, FeedbackIn, RequestRecord
from tuneloop.monitoring.evaluation import evaluate, golden_suite, labelled_examples, run_suite
from tuneloop.monitoring.evaluation.feedback import captured_prompt, correctness, judged_with_times
from tuneloop.platform.data.formats import DataError, read_examples
from tuneloop.platform.errors import ConfigError
from tuneloop.platform.registry import Registry
from tuneloop.serve.chat_completions.protocol import ChatCompletionRequest
from tuneloop.serve.completions.protocol import CompletionRequest
from tuneloop.serve.request.capture import prompt_text

ANSWERS = {"2+2=": " 4", "capital of France?": " Paris"}


def fake_gateway(requests: list[dict[str, Any]], *, logprobs: bool = True) -> OpenAI:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append({"path": request.url.path, **body})
        if body["model"] == "missing-judge":
            error = {"message": "The model `missing-judge` does not exist", "type": "NotFoundError"}
            return httpx.Response(404, json={"error": {**error, "param": "model", "code": "model_not_found"}})
        if body["model"] == "judge":  # a strict grader: the graded answer must be the reference
            text = body["messages"][-1]["content"]
            reference = text.split("Reference answer:\n")[1].split("\n\n")[0]
            graded = text.split("Answer to grade:\n")[1].split("\n\n")[0]
            message = {
                "role": "assistant",
                "content": "Yes." if graded.strip() == reference.strip() else "No",
            }
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return httpx.Response(200, json=_envelope("chat.completion", body, [choice]))
        if request.url.path.endswith("/chat/completions"):
            question = body["messages"][-1]["content"]
            message = {"role": "assistant", "content": ANSWERS.get(question, "no idea").strip()}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return httpx.Response(200, json=_envelope("chat.completion", body, [choice]))
        prompt = body["prompt"]
        if body.get("echo"):
            words = prompt.split(" ")
            offsets = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
            tokens = [*words, "<gen>"]
            lp = {"tokens": tokens, "token_logprobs": [None, *([-0.5] * (len(words) - 1)), -1.0]}
            lp["text_offset"] = [*offsets, len(prompt)]
            choice = {"index": 0, "text": prompt + "x", "logprobs": lp if logprobs else None}
            return httpx.Response(200, json=_envelope("text_completion", body, [choice], completion=1))
        choice = {"index": 0, "text": ANSWERS.get(prompt, " nope"), "logprobs": None, "finish_reason": "stop"}
        return httpx.Response(200, json=_envelope("text_completion", body, [choice]))

    http = httpx.Client(transport=httpx.MockTransport(handle))
    return OpenAI(base_url="http://gateway.test/v1", api_key="tl-admin", http_client=http, max_retries=0)


def _envelope(obj: str, body: dict[str, Any], choices: list[Any], completion: int = 2) -> dict[str, Any]:
    usage = {"prompt_tokens": 3, "completion_tokens": completion, "total_tokens": 3 + completion}
    return {
        "id": "x",
        "object": obj,
        "created": 0,
        "model": body["model"],
        "choices": choices,
        "usage": usage,
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "support.jsonl",
        [
            {"prompt": "2+2=", "completion": " 4"},
            {"prompt": "capital of France?", "completion": " Lyon"},
        ],
    )


def test_scores_answers_and_answer_loss(golden: Path) -> None:
    sent: list[dict[str, Any]] = []
    suite = golden_suite("support", golden)
    assert suite is not None
    result = evaluate(fake_gateway(sent), "support@1", suite.examples, suite="golden", max_tokens=8)
    assert result.scores["exact_match"] == 0.5 and result.scores["token_f1"] == 0.5
    assert result.per_example["exact_match"] == [1.0, 0.0]
    # Only answer tokens count: "2+2= 4" -> [" 4"]; "capital of France? Lyon" -> ["Lyon"].
    assert result.scores["loss"] == pytest.approx(0.5)
    assert result.scores["perplexity"] == pytest.approx(math.exp(0.5))
    greedy = [r for r in sent if not r.get("echo")]
    assert all(r["temperature"] == 0 and r["max_tokens"] == 8 and r["model"] == "support@1" for r in greedy)
    echoed = [r for r in sent if r.get("echo")]
    assert echoed and all(r["logprobs"] == 0 for r in echoed)


def test_chat_examples_use_chat_completions_and_skip_loss_with_a_reason(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]}],
    )
    sent: list[dict[str, Any]] = []
    suite = golden_suite("x", path)
    assert suite is not None
    result = evaluate(fake_gateway(sent), "support@1", suite.examples)
    assert result.scores["exact_match"] == 1.0 and "loss" not in result.scores
    assert "chat" in result.skipped["loss"]
    assert sent[0]["path"].endswith("/chat/completions") and sent[0]["messages"] == [
        {"role": "user", "content": "2+2="}
    ]


def test_no_logprobs_from_the_gateway_skips_loss(golden: Path) -> None:
    suite = golden_suite("support", golden)
    assert suite is not None
    result = evaluate(fake_gateway([], logprobs=False), "support@1", suite.examples)
    assert "loss" not in result.scores and "log-probabilities" in result.skipped["loss"]


def test_run_suite_records_in_registry_and_gauges(golden: Path, registry: Registry) -> None:
    suite = golden_suite("support", golden)
    assert suite is not None
    run_suite(registry, fake_gateway([]), "support", suite)
    event = registry.history("support")[-1]
    assert event.kind == "evaluation" and event.detail["token_f1"] == 0.5 and event.detail["examples"] == 2
    gauge = metrics.REGISTRY.get_sample_value(
        "tuneloop_eval_score",
        {"alias": "support", "version": "support@1", "suite": "golden", "metric": "exact_match"},
    )
    assert gauge == 0.5


def test_a_judge_grades_every_answer_and_its_failure_only_skips_its_metric(
    golden: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = golden_suite("support", golden)
    assert suite is not None
    sent: list[dict[str, Any]] = []
    judged = evaluate(fake_gateway(sent), "support@1", suite.examples, loss=False, judge="judge")
    assert judged.per_example["judge"] == [1.0, 0.0]  # " 4" is right; " Paris" is not " Lyon"
    grading = [r for r in sent if r["model"] == "judge"]
    assert len(grading) == 2 and all(r["temperature"] == 0 for r in grading)
    assert "Question:\n2+2=" in grading[0]["messages"][-1]["content"]

    failed = evaluate(fake_gateway([]), "support@1", suite.examples, loss=False, judge="missing-judge")
    assert "judge" not in failed.scores and "missing-judge could not grade" in failed.skipped["judge"]
    assert failed.scores["exact_match"] == 0.5

    monkeypatch.setenv("TUNELOOP_EVAL_JUDGE", "judge")  # scheduled runs use the configured judge
    run_suite(registry, fake_gateway([]), "support", suite)
    assert registry.history("support")[-1].detail["judge"] == 0.5
    gauge = metrics.REGISTRY.get_sample_value(
        "tuneloop_eval_score",
        {"alias": "support", "version": "support@1", "suite": "golden", "metric": "judge"},
    )
    assert gauge == 0.5


def test_a_bad_golden_set_is_reported_by_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 1}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1"):
        golden_suite("support", bad)


def test_feedback_with_a_right_answer_becomes_labelled_examples(tmp_path: Path) -> None:
    store = CaptureStore(f"sqlite:///{tmp_path / 'capture.db'}")
    chat = json.dumps([{"role": "user", "content": "2+2="}])
    store.add_requests(
        [
            RequestRecord("r1", "support", "support@1", "capital?", " Lyon", 0.1, key_id=1),
            RequestRecord("r2", "support", "support@1", chat, "4", 0.1, key_id=1),
            RequestRecord("r3", "support", "support@1", "hi", "yo", 0.1, key_id=1),
        ]
    )
    store.add_feedback(FeedbackIn(request_id="r1", corrected_answer="Paris"), key_id=1)
    store.add_feedback(FeedbackIn(request_id="r2", label="good"), key_id=1)
    store.add_feedback(
        FeedbackIn(request_id="r3", label="wrong"), key_id=1
    )  # says nothing about the right answer
    examples = labelled_examples(store, "support")
    assert [(e.format, e.completion) for e in examples] == [("prompt_completion", "Paris"), ("chat", None)]
    assert examples[1].messages[-1].content == "4" and examples[1].messages[0].content == "2+2="


@pytest.fixture
def store(tmp_path: Path) -> CaptureStore:
    return CaptureStore(f"sqlite:///{tmp_path / 'capture.db'}")


@pytest.mark.parametrize(
    ("feedback", "verdict"),
    [
        ({"corrected_answer": "the Paris."}, True),  # exact match after normalisation
        ({"corrected_answer": "Lyon", "label": "good"}, False),  # a corrected answer decides first
        ({"label": "Good"}, True),
        ({"label": "wrong", "rating": 5}, False),  # a label decides before a rating
        ({"label": "off-topic"}, None),
        ({"label": "off-topic", "rating": 1}, False),
        ({"rating": 4}, True),
        ({"rating": 5}, True),
        ({"rating": 2}, False),
        ({"rating": 1}, False),
        ({"rating": 3}, None),
    ],
)
def test_correctness_of_one_feedback(
    store: CaptureStore, feedback: dict[str, Any], verdict: bool | None
) -> None:
    store.add_requests(
        [RequestRecord("r1", "support", "support@1", "capital of France?", " Paris", 0.1, key_id=1)]
    )
    row = store.add_feedback(FeedbackIn(request_id="r1", **feedback), key_id=1)
    request = store.get("r1")
    assert request is not None
    assert correctness(request, row) is verdict


def verdicts(store: CaptureStore, alias: str, version: str) -> list[bool]:
    return [verdict for _, verdict in judged_with_times(store, alias, version)]


def test_judged_answers_are_the_versions_latest_verdicts_by_feedback_time(store: CaptureStore) -> None:
    store.add_requests(
        [
            RequestRecord("r1", "support", "support@1", "q1", "a", 0.1, key_id=1),
            RequestRecord("r2", "support", "support@1", "q2", "a", 0.1, key_id=1),
            RequestRecord("r3", "support", "support@2", "q3", "a", 0.1, key_id=1),  # another version
            RequestRecord("r4", "support", "support@1", "q4", "a", 0.1, key_id=1),
            RequestRecord("r5", "other", "support@1", "q5", "a", 0.1, key_id=1),  # another alias
        ]
    )
    for request_id, verdict in [("r1", "good"), ("r2", "bad"), ("r3", "good"), ("r5", "good"), ("r1", "bad")]:
        store.add_feedback(FeedbackIn(request_id=request_id, label=verdict), key_id=1)
    store.add_feedback(FeedbackIn(request_id="r4", rating=3), key_id=1)  # says neither
    assert verdicts(store, "support", "support@1") == [False, False]  # r2, then r1's newer "bad"
    store.add_feedback(FeedbackIn(request_id="r2", rating=5), key_id=1)
    assert verdicts(store, "support", "support@1") == [False, True]  # r1, then r2's newer rating
    assert verdicts(store, "support", "support@2") == [True]
    assert verdicts(store, "support", "support@9") == []


def test_captured_prompt_is_what_the_gateway_captures(tmp_path: Path) -> None:
    turns = [{"role": "system", "content": "Sé breve."}, {"role": "user", "content": "¿2+2=?"}]
    path = write_jsonl(
        tmp_path / "chat.jsonl", [{"messages": [*turns, {"role": "assistant", "content": "4"}]}]
    )
    (example,) = read_examples(path)
    sent = ChatCompletionRequest.model_validate({"model": "support", "messages": turns})
    assert captured_prompt(example) == prompt_text(sent)
    assert "¿2+2=?" in captured_prompt(example) and "4" not in captured_prompt(example)
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2=", "completion": " 4"}])
    (example,) = read_examples(path)
    sent_text = CompletionRequest.model_validate({"model": "support", "prompt": "2+2="})
    assert captured_prompt(example) == prompt_text(sent_text) == "2+2="


def test_only_trusted_feedback_becomes_training_data_or_judges_answers(
    store: CaptureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """r1 judged by its requester (key 1), r2 by an admin (key 9), r3 by another key (2), r4 before
    keys were recorded: by default only the requester's feedback counts."""
    store.add_requests(
        [
            RequestRecord("r1", "support", "support@1", "q1", "a1", 0.1, key_id=1),
            RequestRecord("r2", "support", "support@1", "q2", "a2", 0.1, key_id=1),
            RequestRecord("r3", "support", "support@1", "q3", "a3", 0.1, key_id=1),
            RequestRecord("r4", "support", "support@1", "q4", "a4", 0.1),
        ]
    )
    store.add_feedback(FeedbackIn(request_id="r1", corrected_answer="right1"), key_id=1)
    store.add_feedback(FeedbackIn(request_id="r2", corrected_answer="right2"), key_id=9, by_admin=True)
    store.add_feedback(FeedbackIn(request_id="r3", corrected_answer="poison"), key_id=2)
    store.add_feedback(FeedbackIn(request_id="r4", corrected_answer="legacy"))

    def used() -> tuple[list[str | None], int]:
        examples = labelled_examples(store, "support")
        return [e.completion for e in examples], len(verdicts(store, "support", "support@1"))

    monkeypatch.delenv("TUNELOOP_FEEDBACK_TRUST", raising=False)
    assert used() == (["right1"], 1)
    monkeypatch.setenv("TUNELOOP_FEEDBACK_TRUST", "requester,admin")
    assert used() == (["right1", "right2"], 2)
    monkeypatch.setenv("TUNELOOP_FEEDBACK_TRUST", "admin")
    assert used() == (["right2"], 1)
    monkeypatch.setenv("TUNELOOP_FEEDBACK_TRUST", "any")
    assert used() == (["right1", "right2", "poison", "legacy"], 4)
    monkeypatch.setenv("TUNELOOP_FEEDBACK_TRUST", "everyone")
    with pytest.raises(ConfigError, match=r"TUNELOOP_FEEDBACK_TRUST='everyone'.*unknown everyone"):
        labelled_examples(store, "support")
