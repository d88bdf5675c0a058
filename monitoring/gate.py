"""The promotion gate: a retrained candidate goes live only when it is measurably better.

Both versions answer the same examples through the live gateway, and each example is scored (token
F1 by default) for each of them. Three sets, each judged by its own rule:

* **new ground truth** (`feedback`): labels users gave since the drift's onset, held out of
  training. Corrections and confirmations alike: each says what is right now. The candidate must
  win here, by a *paired* one-sided sign test: among the examples where the two versions score
  differently, the candidate must be the better one often enough that chance alone would do so
  with probability below TUNELOOP_GATE_ALPHA. A raw comparison of two means would let noise promote.
* **unchanged questions** (`unchanged`): the previous job's held-out test split, less the questions
  whose answer feedback changed: what was right and still is;
* **golden set** (`golden`), what the alias must always get right.

The last two are pooled (`unchanged+golden`, every example of both) and the candidate's mean there
may not fall below the live version's by more than TUNELOOP_GATE_GOLDEN_TOLERANCE (absolute). Pooled,
because either set alone may be small: on 21 held-out tweets, one answer in twenty is 0.05.

With neither unchanged questions nor a golden set, the decision would rest on feedback alone, which
anyone holding a key can write; the gate then refuses unless TUNELOOP_GATE_ALLOW_FEEDBACK_ONLY is on.
The candidate is promoted only if the alias still points at the version it was compared with.

`gate.decided` records the action, the reason, the rule, and per set both means, the wins and
losses and the p-value. A promotion also records the candidate's exact-match accuracy on the gate's
labelled data (`baseline`): the reference the feedback drift check starts from (`promotion_reference`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tuneloop.monitoring import metrics
from tuneloop.monitoring.evaluation.runner import EvalResult, evaluate, record
from tuneloop.monitoring.evaluation.suite import FEEDBACK, GOLDEN, UNCHANGED
from tuneloop.platform import settings
from tuneloop.platform.errors import TuneloopError
from tuneloop.platform.refs import adapter_name
from tuneloop.platform.registry.tables import VersionStatus

if TYPE_CHECKING:
    from openai import OpenAI

    from tuneloop.platform.data.formats import Example
    from tuneloop.platform.registry import Registry

GATE_EVENT = "gate.decided"
KEEP_SUITES = (UNCHANGED, GOLDEN)  # the non-regression sets
KEPT = "unchanged+golden"  # both of them pooled: the rule's non-regression comparison
BASELINE_METRIC = "exact_match"


@dataclass(frozen=True)
class Comparison:
    """Both versions on one set: means, how often each was the better one, and the sign test's p."""

    suite: str
    n: int
    live: float
    candidate: float
    wins: int  # examples where the candidate scored higher
    losses: int  # examples where the live version scored higher

    @property
    def p_better(self) -> float:
        """One-sided sign test: P(at least `wins` of the untied examples by chance)."""
        return sign_test(self.wins, self.losses)

    def line(self) -> str:
        return (
            f"{self.suite} ({self.n}): live {self.live:.4f} -> candidate {self.candidate:.4f}, "
            f"{self.wins} better / {self.losses} worse (p={self.p_better:.3g})"
        )


@dataclass(frozen=True)
class GateDecision:
    """Promote or reject, why in one sentence, and for a rejection its metrics label."""

    promote: bool
    reason: str
    reject_reason: str | None = None  # one of metrics.RETRAIN_REJECT_REASONS
    comparisons: tuple[Comparison, ...] = field(default=())
    rule: str = ""

    @property
    def action(self) -> str:
        return "promote" if self.promote else "reject"


def sign_test(wins: int, losses: int) -> float:
    """P(X >= wins) for X ~ Binomial(wins + losses, 1/2); 1 when there is no untied example."""
    n = wins + losses
    if n == 0:
        return 1.0
    log_half = n * math.log(0.5)
    terms = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + log_half
        for k in range(wins, n + 1)
    ]
    peak = max(terms)
    return min(1.0, math.exp(peak) * sum(math.exp(t - peak) for t in terms))


def compare(suite: str, live: Sequence[float], candidate: Sequence[float]) -> Comparison:
    """Pair the two versions' per-example scores on one set."""
    if len(live) != len(candidate) or not live:
        raise ValueError(f"{suite}: {len(live)} live and {len(candidate)} candidate scores cannot be paired")
    wins = sum(1 for a, b in zip(live, candidate, strict=True) if b > a)
    losses = sum(1 for a, b in zip(live, candidate, strict=True) if b < a)
    return Comparison(suite, len(live), sum(live) / len(live), sum(candidate) / len(candidate), wins, losses)


def rule_text(metric: str, alpha: float, tolerance: float) -> str:
    return (
        f"promote when the candidate beats the live version on labels given since the drift's onset "
        f"(paired one-sided sign test on {metric}, p < {alpha:g}) and loses at most {tolerance:g} of "
        f"mean {metric} on unchanged questions and the golden set together"
    )


def decide(
    comparisons: Mapping[str, Comparison],
    *,
    live: bool = True,
    metric: str = "token_f1",
    alpha: float = 0.05,
    tolerance: float = 0.02,
    allow_feedback_only: bool = False,
) -> GateDecision:
    """The gate's rule on paired comparisons keyed by suite (module docstring)."""
    rule = rule_text(metric, alpha, tolerance)
    shown = tuple(comparisons.values())
    if not live:
        return GateDecision(True, "no live version to compare with", comparisons=shown, rule=rule)
    new = comparisons.get(FEEDBACK)
    if new is None:
        why = f"cannot compare: no {metric} on labels given since the drift's onset"
        return GateDecision(False, why, "evaluation_failed", shown, rule)
    if not any(s in comparisons for s in KEEP_SUITES) and not allow_feedback_only:
        why = (
            "feedback alone cannot promote: no golden set and no held-out unchanged questions to show "
            "nothing regressed (TUNELOOP_GATE_ALLOW_FEEDBACK_ONLY)"
        )
        return GateDecision(False, why, "feedback_only", shown, rule)
    if not (new.candidate > new.live and new.p_better < alpha):
        why = f"not significantly better on new ground truth: {new.line()}, needs p < {alpha:g}"
        return GateDecision(False, why, "not_better", shown, rule)
    kept = pool(KEPT, [comparisons[s] for s in KEEP_SUITES if s in comparisons])
    if kept is not None and kept.suite not in comparisons:
        shown = (*shown, kept)
    if kept is not None and kept.candidate < kept.live - tolerance:
        why = f"regressed where answers did not change: {kept.line()}, beyond tolerance {tolerance:g}"
        return GateDecision(False, why, "not_better", shown, rule)
    return GateDecision(True, "; ".join(c.line() for c in shown), comparisons=shown, rule=rule)


def pool(name: str, parts: Sequence[Comparison]) -> Comparison | None:
    """Several comparisons as one over all their examples (means weighted by size); one stays as it is."""
    if len(parts) < 2:
        return parts[0] if parts else None
    n = sum(c.n for c in parts)
    live = sum(c.live * c.n for c in parts) / n
    candidate = sum(c.candidate * c.n for c in parts) / n
    return Comparison(name, n, live, candidate, sum(c.wins for c in parts), sum(c.losses for c in parts))


def apply(
    registry: Registry,
    alias: str,
    candidate: str,
    decision: GateDecision,
    *,
    compared_with: str | None = None,
    baseline: Mapping[str, Any] | None = None,
) -> GateDecision:
    """Carry out a decision on `candidate` (`adapter@N`) for `alias` and record it as `gate.decided`.

    A promotion happens only if the alias still points at `compared_with` (an operator may have
    rolled back or promoted while the gate evaluated): the registry's compare-and-set decides, and a
    candidate that lost that race is rejected as `superseded`."""
    from tuneloop.platform.errors import StaleAliasError
    from tuneloop.platform.promotion import promote

    if decision.promote:
        try:
            promote(
                registry,
                alias,
                candidate,
                reason=f"{alias} -> {candidate}: {decision.reason}",
                expected=compared_with,  # "" when nothing was live; None checks nothing
            )
        except StaleAliasError:
            now = registry.aliases().get(alias)
            decision = GateDecision(
                False,
                f"{alias} moved from {compared_with} to {now} while the gate evaluated; compare again",
                "superseded",
                decision.comparisons,
                decision.rule,
            )
        except TuneloopError as exc:  # it could not go live after all (settings changed, artifact gone)
            decision = GateDecision(False, str(exc), "unservable", decision.comparisons, decision.rule)
        else:
            metrics.PROMOTIONS.labels(alias).inc()
    detail: dict[str, Any] = {
        "alias": alias,
        "candidate": candidate,
        "live": compared_with or None,
        "action": decision.action,
        "reason": decision.reason,
        "rule": decision.rule,
        "comparisons": {c.suite: {**asdict(c), "p_better": c.p_better} for c in decision.comparisons},
    }
    if decision.promote and baseline:
        detail["baseline"] = dict(baseline)
    registry.add_event(
        candidate, GATE_EVENT, f"{candidate} for {alias}: {decision.action} ({decision.reason})", detail
    )
    if not decision.promote:
        registry.set_status(
            candidate, VersionStatus.REJECTED, reason=f"{candidate} rejected: {decision.reason}"
        )
        metrics.RETRAINS_REJECTED.labels(alias, decision.reject_reason or "not_better").inc()
    return decision


def run_gate(
    registry: Registry,
    client: OpenAI,
    alias: str,
    candidate: str,
    *,
    recent: Sequence[Example],
    unchanged: Sequence[Example] = (),
    golden: Sequence[Example] = (),
    metric: str = "token_f1",
) -> GateDecision:
    """Score the live version and `candidate` through the gateway on the same data, decide, apply.

    A candidate the serving engines cannot serve (platform/promotion.py `check_promotable`) is
    rejected as `unservable` before anything is scored."""
    from tuneloop.platform.artifacts import ArtifactStore
    from tuneloop.platform.promotion import check_promotable

    try:
        check_promotable(registry.get_version(candidate), ArtifactStore())
    except TuneloopError as exc:  # a method vLLM cannot serve, weights it would refuse, a missing artifact
        return apply(registry, alias, candidate, GateDecision(False, str(exc), "unservable"))
    live_ref = registry.aliases().get(alias)
    max_tokens = settings.TUNELOOP_EVAL_MAX_TOKENS.get()
    comparisons: dict[str, Comparison] = {}
    labelled: list[float] = []  # the candidate's exact match on data labelled with today's truth
    for suite, examples in ((FEEDBACK, recent), (UNCHANGED, unchanged), (GOLDEN, golden)):
        if not examples:
            continue
        results: dict[str, EvalResult] = {}
        for ref in (candidate, live_ref) if live_ref else (candidate,):
            results[ref] = evaluate(client, ref, examples, suite=suite, max_tokens=max_tokens, loss=False)
            record(registry, alias, results[ref])
        ours = results[candidate].per_example
        if suite != GOLDEN:
            labelled += ours.get(BASELINE_METRIC, [])
        if live_ref and ours.get(metric):
            comparisons[suite] = compare(suite, results[live_ref].per_example[metric], ours[metric])
    decision = decide(
        comparisons,
        live=live_ref is not None,
        metric=metric,
        alpha=settings.TUNELOOP_GATE_ALPHA.get(),
        tolerance=settings.TUNELOOP_GATE_GOLDEN_TOLERANCE.get(),
        allow_feedback_only=settings.TUNELOOP_GATE_ALLOW_FEEDBACK_ONLY.get(),
    )
    baseline = {"metric": BASELINE_METRIC, "correct": int(sum(labelled)), "n": len(labelled)}
    return apply(registry, alias, candidate, decision, compared_with=live_ref or "", baseline=baseline)


def promotion_reference(registry: Registry, ref: str) -> tuple[list[bool], str] | None:
    """What `ref` scored when it was accepted, as per-example right/wrong labels, and where from.

    A version the gate promoted: its exact match on the gate's labelled data. Any other version with
    a test evaluation from its training job: exact match on that held-out test split. None where
    neither was measured (an imported version)."""
    for event in reversed(registry.history(adapter_name(ref))):
        detail = event.detail or {}
        if event.kind == GATE_EVENT and detail.get("candidate") == ref and detail.get("action") == "promote":
            base = detail.get("baseline") or {}
            if int(base.get("n", 0)) > 0:
                n, k = int(base["n"]), int(base["correct"])
                return [True] * k + [False] * (n - k), f"gate data at promotion ({k}/{n} exact)"
    version = registry.get_version(ref)
    score = (version.metrics or {}).get(BASELINE_METRIC)
    tested = ((version.manifest or {}).get("data") or {}).get("test")
    if isinstance(score, int | float) and isinstance(tested, int) and tested > 0:
        k = round(float(score) * tested)
        return [True] * k + [False] * (tested - k), f"its job's test split ({k}/{tested} exact)"
    return None
