"""Quality drift: is the live model doing worse than when it was deployed?

Two detectors, both one-sided (only getting worse is drift; getting better is good news):

* `eval_score` compares per-example evaluation scores of a scheduled live run (golden set, judge
  scores, ...) with the per-example scores the version got at deploy time. Drift needs both a drop
  beyond a tolerance (absolute, or relative to the deploy-time mean) *and* statistical evidence that
  the mean fell at all (one-sided Welch z-test, p < alpha): the tolerance says what is worth acting
  on, the test keeps a small, noisy window from crying wolf. The z (normal) approximation of Welch's
  t is slightly liberal for small samples, hence at least 30 scores a side (one-sided 1% critical
  value 2.46 for t with 30 degrees of freedom, against 2.33).
* `feedback_accuracy` compares the share of correct answers on recently labelled feedback with the
  deploy-time accuracy. This is what catches *concept* drift, where prompts look exactly as they
  did (the embedding and covariate detectors stay quiet) but the right answers have changed. The
  test is one-sided: Fisher's exact test by default (conditional on the margins, so it never
  exceeds alpha; ~1 ms for 10,000 labels), or the pooled two-proportion z-test. The z-test is
  slightly liberal when errors are rare, as their counts are skewed: in 20,000 simulated no-drift
  draws (300–500 reference and 30–100 recent labels, accuracy 0.85–0.95) at alpha 0.01 it alarmed
  1.3–1.6% of the time, Fisher's test 0.4–0.8%.

Samples are per-example values: floats for scores, booleans (or 0/1) for correctness. Where only an
aggregate survives (accuracy 0.9 on 200 test examples) expand it: `[True] * 180 + [False] * 20`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from tuneloop.monitoring.drift.base import (
    DetectorConfig,
    DriftDetector,
    DriftInputError,
    DriftResult,
    fmt,
    normal_sf,
    register,
)


class EvalScoreConfig(DetectorConfig):
    """Settings of the evaluation-score drop detector (higher scores are better)."""

    min_reference: int = Field(30, ge=2, description="Fewest deploy-time per-example scores.")
    min_recent: int = Field(30, ge=2, description="Fewest live per-example scores a decision may rest on.")
    tolerance: float = Field(
        0.05, ge=0, description="Largest drop that is not drift, in the unit tolerance_kind says."
    )
    tolerance_kind: Literal["relative", "absolute"] = Field(
        "relative",
        description="relative: the drop as a share of the deploy-time mean (scale-free, needs a positive "
        "mean); absolute: the drop in score units (for scores in [0, 1] such as accuracy or ROUGE).",
    )
    alpha: float = Field(0.01, gt=0, lt=1, description="The drop must also be significant: p below this.")


@register
class EvalScoreDetector(DriftDetector[float, EvalScoreConfig]):
    """Live evaluation scores vs deploy-time scores: a drop beyond tolerance that is significant."""

    name = "eval_score"
    unit = "scores"
    config_model = EvalScoreConfig

    def _compare(self, reference: Sequence[float], recent: Sequence[float]) -> DriftResult:
        cfg = self.config
        ref, rec = _finite(reference, "reference"), _finite(recent, "recent")
        before, after = float(ref.mean()), float(rec.mean())
        drop = before - after
        if cfg.tolerance_kind == "relative":
            if before <= 0:
                raise DriftInputError(
                    f"eval_score: a relative tolerance needs a positive deploy-time mean, got {before:g}; "
                    "set tolerance_kind='absolute'"
                )
            score, shown = drop / before, f"{100 * drop / before:.1f}%"
            limit = f"{100 * cfg.tolerance:g}%"
        else:
            score, shown, limit = drop, fmt(drop), f"{cfg.tolerance:g}"
        # Welch's standard error: the two runs need not have the same spread or size.
        se = math.sqrt(ref.var(ddof=1) / len(ref) + rec.var(ddof=1) / len(rec))
        p_value = normal_sf(drop / se) if se > 0 else (0.0 if drop > 0 else 1.0)
        drift = score > cfg.tolerance and p_value < cfg.alpha
        means = f"mean {fmt(before)} → {fmt(after)}"
        if drift:
            verdict = f"dropped: {means} (drop {shown} > {limit} tolerance, p={fmt(p_value)} < {cfg.alpha:g})"
        elif score > cfg.tolerance:
            verdict = (
                f"dipped, not significantly: {means} "
                f"(drop {shown} > {limit}, p={fmt(p_value)} ≥ {cfg.alpha:g})"
            )
        else:
            verdict = f"hold: {means} (drop {shown} within {limit} tolerance, p={fmt(p_value)})"
        return self.decided(
            drift,
            f"live eval scores {verdict}",
            score=score,
            threshold=cfg.tolerance,
            p_value=p_value,
            alpha=cfg.alpha,
            sampled=(len(ref), len(rec)),
            details={"reference_mean": before, "recent_mean": after, "tolerance_kind": cfg.tolerance_kind},
        )


class FeedbackAccuracyConfig(DetectorConfig):
    """Settings of the feedback-accuracy (concept drift) test."""

    min_reference: int = Field(30, ge=2, description="Fewest deploy-time labelled examples.")
    min_recent: int = Field(30, ge=2, description="Fewest recently labelled answers a decision may rest on.")
    alpha: float = Field(0.01, gt=0, lt=1, description="Drift when the one-sided p-value is below this.")
    min_drop: float = Field(
        0.0, ge=0, lt=1, description="Smallest accuracy drop (absolute, 0–1) worth calling drift."
    )
    test: Literal["exact", "z"] = Field(
        "exact",
        description="exact: Fisher's exact test (never above alpha); z: pooled two-proportion z-test "
        "(normal approximation, slightly liberal when errors are rare).",
    )


@register
class FeedbackAccuracyDetector(DriftDetector[bool, FeedbackAccuracyConfig]):
    """Accuracy on recent feedback labels vs deploy-time accuracy: the concept-drift detector."""

    name = "feedback_accuracy"
    unit = "labels"
    config_model = FeedbackAccuracyConfig

    def _compare(self, reference: Sequence[bool], recent: Sequence[bool]) -> DriftResult:
        cfg = self.config
        n1, n2 = len(reference), len(recent)
        k1, k2 = count_correct(reference, "reference"), count_correct(recent, "recent")
        before, after = k1 / n1, k2 / n2
        drop = before - after
        test = cfg.test
        p_value = _z_test(k1, n1, k2, n2) if test == "z" else _fisher_lower(k1, n1, k2, n2)
        drift = p_value < cfg.alpha and drop >= cfg.min_drop
        name = "one-sided z-test" if test == "z" else "one-sided Fisher exact test"
        change = f"{fmt(before)} → {fmt(after)}"
        if drift:
            verdict = f"fell {change} ({name} p={fmt(p_value)} < {cfg.alpha:g}): the right answers changed"
        else:
            verdict = f"holds {change} ({name} p={fmt(p_value)}, min drop {cfg.min_drop:g})"
        return self.decided(
            drift,
            f"feedback accuracy {verdict}",
            score=drop,
            threshold=cfg.min_drop,
            p_value=p_value,
            alpha=cfg.alpha,
            sampled=(n1, n2),
            details={"reference_accuracy": before, "recent_accuracy": after, "test": test},
        )


def _finite(values: Sequence[float], side: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        bad = [v for v in array.tolist() if not math.isfinite(v)][:3]
        raise DriftInputError(f"eval_score: {side} scores must be finite numbers, found {bad}")
    return array


def count_correct(values: Sequence[bool], side: str, detector: str = "feedback_accuracy") -> int:
    """How many labels say "right"; anything but True/False (or 1/0) is a DriftInputError naming
    `detector` and the `side` it came in."""
    bad = [v for v in values if v not in (True, False)]  # 0 and 1 compare equal to them, too
    if bad:
        raise DriftInputError(f"{detector}: {side} labels must be True/False or 1/0, found {bad[:3]}")
    return sum(bool(v) for v in values)


def _z_test(k1: int, n1: int, k2: int, n2: int) -> float:
    """P-value of H1 "recent accuracy < reference accuracy", pooled two-proportion z-test."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:  # everything right (or wrong) on both sides: no evidence of a difference
        return 1.0
    return normal_sf((k1 / n1 - k2 / n2) / se)


def _fisher_lower(k1: int, n1: int, k2: int, n2: int) -> float:
    """P(recent correct ≤ k2) given the margins (hypergeometric): Fisher's exact one-sided p-value."""
    total, correct = n1 + n2, k1 + k2

    def log_comb(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    low = max(0, n2 - (total - correct))
    terms = [log_comb(correct, k) + log_comb(total - correct, n2 - k) for k in range(low, k2 + 1)]
    if not terms:
        return 1.0
    # Sum in log space: the binomial coefficients overflow floats for a few thousand labels.
    peak = max(terms)
    log_p = peak + math.log(sum(math.exp(t - peak) for t in terms)) - log_comb(total, n2)
    return min(1.0, math.exp(log_p))
