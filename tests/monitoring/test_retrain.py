"""The retrain step's data and bookkeeping: refreshed training data, the last spec, the prepared
folder and open retrains, on a real SQLite registry and capture store (no Ray: `start` and `advance`
submit and follow real jobs, and are covered end to end)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.servers import RayHead

from tuneloop.monitoring.capture import CaptureStore, FeedbackIn, RequestRecord
from tuneloop.monitoring.policy import RETRAIN_FINISHED, RETRAIN_STARTED
from tuneloop.monitoring.retrain import (
    GATE_FILE,
    SPEC_FILE,
    TEST_FILE,
    TRAIN_FILE,
    UNCHANGED_FILE,
    advance,
    last_spec,
    open_retrains,
    prepare,
    refresh,
)
from tuneloop.platform.data.formats import Example, Message, read_examples
from tuneloop.platform.errors import ConfigError, NotFoundError
from tuneloop.platform.ray.client import JobsClient
from tuneloop.platform.registry import Registry
from tuneloop.platform.spec import load_spec


def pc(question: str, answer: str) -> Example:
    return Example(format="prompt_completion", line=1, prompt=question, completion=answer)


def chat(question: str, answer: str) -> Example:
    turns = (Message("user", question), Message("assistant", answer))
    return Example(format="chat", line=1, messages=turns)


def pairs(examples: list[Example]) -> list[tuple[str | None, str | None]]:
    return [(ex.prompt, ex.completion) for ex in examples]


# --- refresh (pure) ------------------------------------------------------------------------------


def test_the_newest_answer_to_a_question_wins() -> None:
    previous = [pc("q1", "old"), pc("q2", "kept")]
    earlier = [pc("q1", "newer")]
    recent = [pc("q1", "newest"), pc("q3", "fresh")]
    data = refresh(previous, [], earlier, recent, replay=1.0, gate_share=0.0)
    assert pairs(data.train) == [("q2", "kept"), ("q1", "newest"), ("q3", "fresh")]
    assert data.gate == [] and data.test == [] and data.unchanged == []
    assert data.counts == {
        "previous": 2,
        "previous_superseded": 1,
        "previous_replayed": 1,
        "changed": 1,
        "doubtful_left_out": 0,
        "fresh": 2,
        "fresh_recent": 2,
        "other_format": 0,
        "held_out_for_gate": 0,
        "unchanged_for_gate": 0,
        "test": 0,
        "train": 3,
    }


def test_test_questions_never_reach_training_and_carry_the_newest_answer() -> None:
    """Live traffic repeats test questions: their labels must not leak into training (the job's
    leakage check would refuse the retrain), changed ones leave the unchanged set, all go to the gate."""
    previous = [pc(f"t{i}", "a") for i in range(10)]
    test = [pc("x1", "a"), pc("x2", "a"), pc("x3", "a")]
    recent = [pc("x1", "a"), pc("x2", "b"), pc("t1", "b")]  # x1 confirmed, x2 and t1 changed
    data = refresh(previous, test, [], recent, replay=1.0, gate_share=0.0)
    trained = {ex.prompt for ex in data.train}
    assert not trained & {"x1", "x2", "x3"}
    assert pairs(data.test) == [("x1", "a"), ("x2", "b"), ("x3", "a")]
    assert pairs(data.unchanged) == [("x1", "a"), ("x3", "a")]
    assert pairs(data.gate) == [("x1", "a"), ("x2", "b")]  # recent labels of test questions
    assert ("t1", "b") in pairs(data.train) and ("t1", "a") not in pairs(data.train)
    assert data.counts["changed"] == 2 and len(data.train) == len({ex.prompt_key() for ex in data.train})


def test_an_answer_that_recent_labels_mostly_replaced_is_not_replayed_unchecked() -> None:
    """Tickets about parcels went to `shipping`; since the re-organisation 5 of the 6 asked again go
    to `logistics`. Parcel tickets nobody asked again still say `shipping`: left out everywhere."""
    previous = [pc(f"parcel {i}", "shipping") for i in range(10)] + [
        pc(f"bill {i}", "billing") for i in range(8)
    ]
    test = [pc("parcel t", "shipping"), pc("bill t", "billing")]
    recent = [pc(f"parcel {i}", "logistics") for i in range(5)] + [pc("parcel 5", "shipping")]
    recent += [pc(f"bill {i}", "billing") for i in range(6)]
    data = refresh(previous, test, [], recent, replay=1.0, gate_share=0.0)
    trained = dict(pairs(data.train))
    assert all(trained[f"parcel {i}"] == "logistics" for i in range(5)) and trained["parcel 5"] == "shipping"
    assert not any(f"parcel {i}" in trained for i in range(6, 10))  # unchecked `shipping`: doubtful
    assert all(trained[f"bill {i}"] == "billing" for i in range(8))  # a class that kept its answer
    assert pairs(data.unchanged) == [("bill t", "billing")] and pairs(data.test) == [("bill t", "billing")]
    assert data.counts["doubtful_left_out"] == 5


def test_only_labels_since_the_onset_are_new_ground_truth() -> None:
    questions = [f"q{i}" for i in range(100)]
    earlier = [pc(q, "before") for q in questions[:50]]
    recent = [pc(q, "after") for q in questions[50:]]
    data = refresh([], [], earlier, recent, replay=1.0, gate_share=0.5)
    assert data.gate and all(ex.completion == "after" for ex in data.gate)
    trained = {ex.prompt for ex in data.train}
    assert set(questions[:50]) <= trained  # older labels train, never judge


def test_the_gate_holds_out_whole_questions_and_they_never_reach_training() -> None:
    questions = [f"question {i}" for i in range(200)]
    previous = [pc(q, "old") for q in questions]
    earlier = [pc(q, "new") for q in questions]
    recent = [pc(q, "from feedback") for q in questions]
    data = refresh(previous, [], earlier, recent, replay=1.0, gate_share=0.3)
    gated = {ex.prompt for ex in data.gate}
    trained = {ex.prompt for ex in data.train}
    assert 0.2 * 200 < len(gated) < 0.4 * 200
    assert not gated & trained and gated | trained == set(questions)
    # The gate, too, has only the newest answer; the old answer to a held-out question is not trained on.
    assert len(data.gate) == len(gated)
    assert all(ex.completion == "from feedback" for ex in [*data.gate, *data.train])
    assert data.counts["held_out_for_gate"] == len(data.gate)
    assert data.counts["previous_superseded"] == 200 and data.counts["train"] == len(data.train)


def test_the_gate_split_is_stable_across_runs_and_answers() -> None:
    questions = [f"q{i}" for i in range(100)]
    first = refresh([], [], [], [pc(q, "a") for q in questions], replay=1.0, gate_share=0.5)
    again = refresh([], [], [], [pc(q, "another answer") for q in questions], replay=1.0, gate_share=0.5)
    assert [ex.prompt for ex in first.gate] == [ex.prompt for ex in again.gate]
    assert 0 < len(first.gate) < 100
    everything = refresh([], [], [], [pc(q, "a") for q in questions], replay=1.0, gate_share=1.0)
    assert len(everything.gate) == 100 and everything.train == []


def test_replay_thins_the_previous_data_stably() -> None:
    previous = [pc(f"q{i}", "a") for i in range(300)]
    full = refresh(previous, [], [], [], replay=1.0, gate_share=0.0)
    half = refresh(previous, [], [], [], replay=0.5, gate_share=0.0)
    quarter = refresh(previous, [], [], [], replay=0.25, gate_share=0.0)
    none = refresh(previous, [], [], [], replay=0.0, gate_share=0.0)
    assert len(full.train) == 300 and none.train == []
    assert 0.4 * 300 < len(half.train) < 0.6 * 300
    # Thinned by a hash of the question, not a random draw: a thinner replay is part of a thicker one.
    assert set(pairs(quarter.train)) < set(pairs(half.train))
    assert half.train == refresh(previous, [], [], [], replay=0.5, gate_share=0.0).train
    assert half.counts["previous_replayed"] == len(half.train) and half.counts["previous_superseded"] == 0


def test_examples_of_another_format_are_dropped_and_counted() -> None:
    previous = [pc("q1", "a")]
    data = refresh(
        previous, [], [chat("q2", "b"), pc("q3", "c")], [chat("q1", "d")], replay=1.0, gate_share=0.0
    )
    assert [ex.format for ex in data.train] == ["prompt_completion", "prompt_completion"]
    assert pairs(data.train) == [("q1", "a"), ("q3", "c")]  # the chat "q1" did not supersede
    assert data.counts["other_format"] == 2 and data.counts["train"] == 2


# --- last_spec, prepare, open_retrains on a real registry and capture store -------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def spec_for(train: Path, min_examples: int = 4) -> dict[str, Any]:
    return {
        "base_model": "m",
        "method": {"name": "lora", "rank": 4},
        "data": {"train": str(train), "min_examples": min_examples},
        "output": {"adapter": "support"},
    }


@pytest.fixture
def store(tmp_path: Path) -> CaptureStore:
    return CaptureStore(f"sqlite:///{tmp_path / 'c.db'}")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'r.db'}")


def add_version(registry: Registry, **kwargs: Any) -> str:
    version = registry.add_version(
        "support", base_model="m", method="lora", store=lambda n: f"mem://{n}", **kwargs
    )
    return version.ref


def test_last_spec_prefers_the_job_record_to_the_lineage(registry: Registry, tmp_path: Path) -> None:
    registry.add_job("job-1", "support", spec_for(tmp_path / "submitter.jsonl"))
    ref = add_version(registry, job_id="job-1", manifest={"spec": spec_for(Path("/ray/working/dir.jsonl"))})
    assert last_spec(registry, ref).data.train == tmp_path / "submitter.jsonl"


def test_last_spec_falls_back_to_the_lineage(registry: Registry, tmp_path: Path) -> None:
    registry.add_job("job-1", "support", {})  # a job row without a spec
    lineage = {"spec": spec_for(tmp_path / "d.jsonl")}
    for ref in (
        add_version(registry, job_id="job-1", manifest=lineage),
        add_version(registry, manifest=lineage),
    ):
        spec = last_spec(registry, ref)
        assert spec.data.train == tmp_path / "d.jsonl" and spec.method.rank == 4


def test_an_imported_version_has_no_spec_to_retrain_from(registry: Registry) -> None:
    ref = add_version(registry)
    with pytest.raises(ConfigError, match=r"support@1 has no recorded job spec \(imported\?\)"):
        last_spec(registry, ref)


@pytest.fixture
def live(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """support@1 live, trained by a recorded job on 6 questions; returns its training file."""
    monkeypatch.setenv("TUNELOOP_RETRAIN_DATA_DIR", str(tmp_path / "new-data"))
    monkeypatch.setenv("TUNELOOP_RETRAIN_GATE_SHARE", "0")
    train = write_jsonl(
        tmp_path / "first" / "train.jsonl", [{"prompt": f"q{i}", "completion": "old"} for i in range(6)]
    )
    registry.add_job("job-1", "support", spec_for(train))
    registry.promote("support", add_version(registry, job_id="job-1"))
    return train


def test_prepare_writes_a_runnable_retrain_of_the_live_version(
    registry: Registry, store: CaptureStore, live: Path, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "new-data" / "support.jsonl", [{"prompt": "q1", "completion": "new"}])
    store.add_requests(
        [
            RequestRecord("r0", "support", "support@1", "q0", "old", 0.1, key_id=1),
            RequestRecord("r9", "support", "support@1", "q9", "right", 0.1, key_id=1),
            RequestRecord("r8", "support", "support@1", "q8", "wrong", 0.1, key_id=1),
        ]
    )
    store.add_feedback(FeedbackIn(request_id="r0", corrected_answer="corrected"), key_id=1)
    store.add_feedback(FeedbackIn(request_id="r9", label="good"), key_id=1)
    store.add_feedback(
        FeedbackIn(request_id="r8", label="bad"), key_id=1
    )  # no right answer: not training data

    folder = tmp_path / "retrains" / "support" / "1"
    data = prepare(registry, store, "support", folder)

    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [GATE_FILE, SPEC_FILE, TEST_FILE, TRAIN_FILE, UNCHANGED_FILE]
    )
    assert not folder.with_name("1.partial").exists()
    assert (folder / SPEC_FILE).read_text().startswith("# Retrain of support@1 for alias support")
    spec = load_spec(folder / SPEC_FILE)  # it must validate as `tuneloop train` reads it
    assert spec.data.train == folder / TRAIN_FILE and spec.output.parent == "support@1"
    assert spec.output.init_from is None  # trained from the base, as support@1 was (by default)
    assert spec.method.rank == 4 and spec.data.min_examples == 4 and spec.output.adapter == "support"
    written = read_examples(folder / TRAIN_FILE)
    assert [ex.key() for ex in written] == [ex.key() for ex in data.train]
    # The previous job held one of the six questions out as its test split: it stays out of training,
    # in the retrain's test file, and in the gate's unchanged set (nobody changed its answer).
    [held] = read_examples(folder / TEST_FILE)
    assert spec.data.test == folder / TEST_FILE and spec.data.validation is None
    expected = {
        "q0": "corrected",
        "q1": "new",
        "q2": "old",
        "q3": "old",
        "q4": "old",
        "q5": "old",
        "q9": "right",
    }
    del expected[held.prompt or ""]
    assert dict(pairs(written)) == expected
    assert pairs(read_examples(folder / UNCHANGED_FILE)) == [(held.prompt, "old")]
    assert data.counts["changed"] == 2 and data.counts["fresh"] == 3
    assert live.read_text().count("old") == 6  # the previous job's file is left as it was


def test_a_warm_start_is_a_setting(
    registry: Registry, store: CaptureStore, live: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_RETRAIN_WARM_START", "1")
    write_jsonl(tmp_path / "new-data" / "support.jsonl", [{"prompt": "q1", "completion": "new"}])
    prepare(registry, store, "support", tmp_path / "retrain")
    assert load_spec(tmp_path / "retrain" / SPEC_FILE).output.init_from == "support@1"


def test_prepare_writes_the_held_out_questions_to_the_gate_file(
    registry: Registry, store: CaptureStore, live: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_RETRAIN_GATE_SHARE", "1")
    write_jsonl(tmp_path / "new-data" / "support.jsonl", [{"prompt": "q1", "completion": "new"}])
    data = prepare(registry, store, "support", tmp_path / "retrain")
    assert pairs(read_examples(tmp_path / "retrain" / GATE_FILE)) == [("q1", "new")]
    assert pairs(data.gate) == [("q1", "new")]
    trained = pairs(read_examples(tmp_path / "retrain" / TRAIN_FILE))
    assert "q1" not in dict(trained) and len(trained) == 4  # six, less q1 and the test question


def test_too_few_examples_is_refused_and_leaves_no_folder(
    registry: Registry, store: CaptureStore, live: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_RETRAIN_REPLAY", "0")  # only new data and feedback: there is none
    folder = tmp_path / "retrain"
    with pytest.raises(
        ConfigError, match=r"support: a retrain would have 0 training examples, fewer than the 4"
    ):
        prepare(registry, store, "support", folder)
    assert not folder.exists() and not folder.with_name("retrain.partial").exists()


def test_prepare_of_an_unknown_alias_is_not_found(
    registry: Registry, store: CaptureStore, tmp_path: Path
) -> None:
    with pytest.raises(NotFoundError, match="no alias named 'nope'"):
        prepare(registry, store, "nope", tmp_path / "retrain")


def test_open_retrains_are_started_and_not_finished(registry: Registry) -> None:
    registry.promote("support", add_version(registry))
    registry.promote("canary", "support@1")  # another alias of the same adapter
    for job in ("job-a", "job-b"):
        registry.add_event("support", RETRAIN_STARTED, "started", {"alias": "support", "job_id": job})
    registry.add_event("support", RETRAIN_STARTED, "started", {"alias": "canary", "job_id": "job-c"})
    registry.add_event("support", RETRAIN_STARTED, "no job id", {"alias": "support"})
    assert [r["job_id"] for r in open_retrains(registry, "support")] == ["job-a", "job-b"]
    registry.add_event("support", RETRAIN_FINISHED, "done", {"alias": "support", "job_id": "job-a"})
    registry.add_event("support", RETRAIN_FINISHED, "done", {"alias": "canary", "job_id": "job-b"})
    assert [r["job_id"] for r in open_retrains(registry, "support")] == ["job-b"]
    assert [r["job_id"] for r in open_retrains(registry, "canary")] == ["job-c"]


def test_a_job_record_that_no_longer_validates_falls_back_to_the_lineage(
    registry: Registry, tmp_path: Path
) -> None:
    old_style = {
        **spec_for(tmp_path / "submitter.jsonl"),
        "method": {"name": "lora", "num_virtual_tokens": 8},
    }
    registry.add_job("job-1", "support", old_style)  # every default dumped, as job rows once were
    ref = add_version(registry, job_id="job-1", manifest={"spec": spec_for(tmp_path / "lineage.jsonl")})
    assert last_spec(registry, ref).data.train == tmp_path / "lineage.jsonl"


def test_replay_zero_needs_no_previous_file(
    registry: Registry, store: CaptureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Kubernetes the control pod may not see the file the last job was submitted with."""
    registry.add_job("job-1", "support", spec_for(tmp_path / "on-a-laptop" / "train.jsonl"))
    registry.promote("support", add_version(registry, job_id="job-1"))
    monkeypatch.setenv("TUNELOOP_RETRAIN_REPLAY", "0")
    monkeypatch.setenv("TUNELOOP_RETRAIN_GATE_SHARE", "0")
    monkeypatch.setenv("TUNELOOP_RETRAIN_DATA_DIR", str(tmp_path / "new"))
    write_jsonl(
        tmp_path / "new" / "support.jsonl", [{"prompt": f"q{i}", "completion": "a"} for i in range(6)]
    )
    data = prepare(registry, store, "support", tmp_path / "retrain")
    assert data.counts["previous"] == 0 and data.counts["train"] == 6


@pytest.mark.slow
def test_a_job_the_cluster_forgot_is_closed_as_lost(
    registry: Registry, ray_head: RayHead, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.promote("support", add_version(registry))
    detail = {"alias": "support", "job_id": "tuneloop-support-gone", "folder": "/nowhere", "counts": {}}
    registry.add_event("support", RETRAIN_STARTED, "started", detail)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", ray_head.env["RAY_AUTH_TOKEN_PATH"])
    closed = advance(registry, "support", JobsClient(ray_head.address), client=None)
    assert closed == [None] and open_retrains(registry, "support") == []
    finished = registry.history("support")[-1]
    assert finished.kind == RETRAIN_FINISHED and finished.detail["status"] == "LOST"
