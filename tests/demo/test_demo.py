"""The demo's pieces that need no servers: the task built from a corpus, the job spec it submits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tuneloop.demo.data import DRIFT, LABELS, Tweet, build_task, read_tweets
from tuneloop.demo.run import job_spec
from tuneloop.platform.data.formats import read_examples
from tuneloop.platform.spec import parse_spec


def write_corpus(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentiment", "confidence", "text"])
        writer.writerows(rows)
    return path


def test_only_clear_printable_unique_tweets_are_read(tmp_path: Path) -> None:
    corpus = write_corpus(
        tmp_path / "c.csv",
        [
            ("negative", "0.95", "My flight was delayed for five hours again"),
            ("negative", "0.95", "my FLIGHT was delayed for five hours again"),  # duplicate, any case
            ("positive", "0.50", "Lovely crew, thanks for the upgrade today"),  # not clear enough
            ("neutral", "1", "short"),  # too short
            ("neutral", "1", "Caf\u00e9 opens at the gate at nine tomorrow"),  # not ASCII
            ("angry", "1", "This label is not one of the three we know"),
            ("neutral", "n/a", "A confidence that is not a number at all"),
            ("positive", "0.9", "Thanks   for the   quick rebooking, much appreciated"),
        ],
    )
    tweets = read_tweets(corpus)
    assert tweets == [
        Tweet("My flight was delayed for five hours again", "negative"),
        Tweet("Thanks for the quick rebooking, much appreciated", "positive"),
    ]


def test_the_task_is_balanced_disjoint_and_the_golden_set_avoids_drifted_labels() -> None:
    tweets = [Tweet(f"tweet number {i} about a flight", LABELS[i % 3]) for i in range(300)]
    task = build_task(tweets, train=20, golden=5, traffic=10, seed=1)
    assert len(task.train) == 60 and len(task.traffic) == 30
    assert {t.label for t in task.golden} == set(LABELS) - set(DRIFT) and len(task.golden) == 10
    texts = [t.text for t in (*task.train, *task.golden, *task.traffic)]
    assert len(texts) == len(set(texts))
    assert build_task(tweets, train=20, golden=5, traffic=10, seed=1) == task  # seeded
    with pytest.raises(ValueError, match="clear positive tweets"):
        build_task(tweets, train=90, golden=5, traffic=10)


def test_the_drift_changes_only_the_answers_it_names() -> None:
    negative, positive = Tweet("late again", "negative"), Tweet("great crew", "positive")
    assert (negative.answer(), negative.answer(drifted=True)) == ("negative", "complaint")
    assert positive.answer(drifted=True) == "positive"
    assert negative.row(drifted=True)["messages"][:-1] == negative.messages()


def test_the_demo_job_spec_and_its_data_validate(tmp_path: Path) -> None:
    tweets = [Tweet(f"tweet number {i} about a flight", LABELS[i % 3]) for i in range(30)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(t.row()) + "\n" for t in tweets))
    spec = parse_spec(job_spec(tmp_path / "model", train))
    assert spec.method.name == "lora" and spec.output.adapter == "triage"
    examples = read_examples(train, task=spec.task)
    assert [e.messages[-1].content for e in examples[:3]] == ["positive", "negative", "neutral"]
