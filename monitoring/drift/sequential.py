"""Sequential concept-drift detection: a CUSUM on the live version's stream of judged answers.

`feedback_cusum` watches the error rate of the answers users judged, one label at a time, oldest
first, against the error rate the version had when it was accepted (the *reference*: its accuracy on
held-out data at promotion, expanded to per-example labels). It is Page's CUSUM for a Bernoulli rate:
each wrong answer adds log(e1/e0) to a running sum, each right one adds log((1-e1)/(1-e0)) (a small
negative number), and the sum never goes below zero. e0 is the reference error rate and e1 = e0 +
`shift`, the smallest rise worth acting on. The sum stays near zero while answers are as good as at
promotion, and climbs steadily once a share of the right answers has changed. Drift is declared once
the sum reaches `threshold` (h), and holds until the sum is back at zero, i.e. until answers have
been right again for long enough to undo the evidence (hysteresis, so the decision does not flip).

Why not two windows compared with a test (the `feedback_accuracy` detector)? A partial drift (a
quarter of the answers changing) gives two windows of 100 labels a p-value that wanders around
alpha, so the decision flips from one round to the next, and it needs labels from before the drift
as its reference. The CUSUM accumulates evidence instead of forgetting it, so a sustained shift
keeps it up, and its reference is what the version measured when it was promoted.

The reference is estimated from a finite sample, and an estimate that is too optimistic would alarm
on a healthy model. So e0 is the Jeffreys estimate (errors + 1/2) / (n + 1), raised by
`reference_margin` standard errors: a small, honest allowance for that uncertainty.

The *onset* reported is the classic CUSUM change-point estimate: the last label at which the sum was
zero before it rose to its current excursion. The retrain step uses it to tell labels given after
the change from older ones. False-alarm rate and delay on partial drifts: bench/drift.py --partial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from tuneloop.monitoring.drift.base import (
    DetectorConfig,
    DriftDetector,
    DriftResult,
    fmt,
    register,
)
from tuneloop.monitoring.drift.quality import count_correct


class FeedbackCusumConfig(DetectorConfig):
    """Settings of the error-rate CUSUM."""

    min_reference: int = Field(20, ge=2, description="Fewest reference labels (held-out examples).")
    min_recent: int = Field(10, ge=2, description="Fewest judged answers before any decision.")
    shift: float = Field(
        0.1, gt=0, lt=1, description="The rise of the error rate (absolute, 0-1) the test is tuned to catch."
    )
    threshold: float = Field(
        6.0,
        gt=0,
        description="h: drift once the CUSUM sum reaches this, until it is back at zero (higher: fewer false "
        "alarms, later detection; bench/drift.py --partial measures both).",
    )
    reference_margin: float = Field(
        1.5, ge=0, description="Standard errors added to the reference error rate for its sampling noise."
    )


@register
class FeedbackCusumDetector(DriftDetector[bool, FeedbackCusumConfig]):
    """Page's CUSUM on judged answers: a sustained rise of the error rate above the reference's."""

    name = "feedback_cusum"
    unit = "labels"
    config_model = FeedbackCusumConfig

    def _compare(self, reference: Sequence[bool], recent: Sequence[bool]) -> DriftResult:
        cfg = self.config
        errors_ref = len(reference) - count_correct(reference, "reference", self.name)
        count_correct(recent, "recent", self.name)
        # Capped so that e1 stays a rate: a reference that bad leaves nothing to watch for anyway.
        e0 = min(reference_error_rate(errors_ref, len(reference), cfg.reference_margin), 0.999 - cfg.shift)
        e1 = e0 + cfg.shift
        path = cusum_path(recent, e0, e1)
        level = path[-1]
        onset = excursion_start(path)
        since = recent[onset:]
        peak = max(path[onset:])
        # Drift from the moment the sum reaches h until it is back at zero: a sum wandering around h
        # under a small sustained shift would otherwise flip the decision from round to round.
        drift = peak >= cfg.threshold
        rate_since = 1 - sum(bool(v) for v in since) / len(since) if since else 0.0
        change = (
            f"error rate {fmt(rate_since)} over the last {len(since)} labels against {fmt(e0)} at promotion"
        )
        if drift:
            reached = f"CUSUM {fmt(level)} (peak {fmt(peak)} >= {cfg.threshold:g})"
            verdict = f"rose: {reached}, {change}: the right answers changed"
        else:
            verdict = f"holds: CUSUM {fmt(level)} < {cfg.threshold:g} ({change})"
        return self.decided(
            drift,
            f"feedback errors {verdict}",
            score=level,
            threshold=cfg.threshold,
            sampled=(len(reference), len(recent)),
            details={
                "reference_error_rate": e0,
                "tuned_error_rate": e1,
                "recent_error_rate": rate_since,
                "onset_index": onset,
                "peak": peak,
            },
        )


def reference_error_rate(errors: int, n: int, margin: float) -> float:
    """The reference error rate: Jeffreys' estimate raised by `margin` standard errors, below 1."""
    estimate = (errors + 0.5) / (n + 1)
    return min(0.999, estimate + margin * math.sqrt(estimate * (1 - estimate) / n))


def cusum_path(labels: Sequence[bool], e0: float, e1: float) -> list[float]:
    """The CUSUM sum after each label (True = right answer); a leading 0 for before the first."""
    up, down = math.log(e1 / e0), math.log((1 - e1) / (1 - e0))
    path = [0.0]
    for right in labels:
        path.append(max(0.0, path[-1] + (down if right else up)))
    return path


def excursion_start(path: Sequence[float]) -> int:
    """How many labels came before the current excursion: the last index where the sum was zero."""
    for i in range(len(path) - 1, -1, -1):
        if path[i] == 0.0:
            return i
    return 0
