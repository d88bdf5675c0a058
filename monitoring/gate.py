"""The promotion gate: a retrained candidate goes live only when it is measurably better.

Two conditions, on one metric (token F1 by default), both versions scored on the same examples:

* on the *recent labelled data* (captured traffic whose feedback says the right answer), the suite
  that shows the drift, the candidate must beat the live version by more than `min_gain`;
* on the *golden set*, what the alias must keep getting right, it may not fall below the live
  version's score by more than `golden_tolerance` (absolute), so a fix for new traffic cannot
  silently break old behaviour.

`decide` is the rule on score dicts; `apply` carries it out (promote: `Registry.promote`, which
the gateways follow and hot-load; reject: status `rejected` with the reason) and records an event;
`run_gate` scores both versions through the live gateway first, recording every evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuneloop.monitoring import metrics
from tuneloop.monitoring.evaluation.runner import evaluate, record
from tuneloop.monitoring.evaluation.suite import FEEDBACK, GOLDEN
from tuneloop.platform import settings
from tuneloop.platform.errors import TuneloopError
from tuneloop.platform.registry.models import VersionStatus

if TYPE_CHECKING:
    from openai import OpenAI

    from tuneloop.platform.registry import Registry
    from tuneloop.train.data.formats import Example

GATE_EVENT = "gate.decided"


@dataclass(frozen=True)
class GateDecision:
    """Promote or reject, why in one sentence, and for a rejection its metrics label."""

    promote: bool
    reason: str
    reject_reason: str | None = None  # one of metrics.RETRAIN_REJECT_REASONS

    @property
    def action(self) -> str:
        return "promote" if self.promote else "reject"


def decide(
    candidate: Mapping[str, float],
    live: Mapping[str, float] | None,
    *,
    metric: str = "token_f1",
    golden_tolerance: float = 0.02,
    min_gain: float = 0.0,
) -> GateDecision:
    """The gate's rule on per-suite scores (`{"feedback": 0.71, "golden": 0.80}`) of one metric."""
    if live is None:
        return GateDecision(True, "no live version to compare with")
    missing = [s for s in (FEEDBACK, GOLDEN) if s in live and s not in candidate]
    if FEEDBACK not in live or missing:
        what = ", ".join(missing) or f"{FEEDBACK} (the live version has no score on recent labelled data)"
        return GateDecision(False, f"cannot compare: no {metric} on {what}", "evaluation_failed")
    new, old = candidate[FEEDBACK], live[FEEDBACK]
    if not new > old + min_gain:
        why = f"{metric} on recent labelled data {new:.4f} does not beat live {old:.4f}"
        return GateDecision(False, why + (f" by more than {min_gain:g}" if min_gain else ""), "not_better")
    if GOLDEN in live:
        g_new, g_old = candidate[GOLDEN], live[GOLDEN]
        if g_new < g_old - golden_tolerance:
            fell = f"{g_old:.4f} -> {g_new:.4f}"
            why = f"{metric} on the golden set fell {fell}, beyond tolerance {golden_tolerance:g}"
            return GateDecision(False, why, "not_better")
        golden = f"; golden {g_old:.4f} -> {g_new:.4f} (tolerance {golden_tolerance:g})"
    else:
        golden = "; no golden set"
    return GateDecision(True, f"{metric} on recent labelled data {old:.4f} -> {new:.4f}{golden}")


def apply(registry: Registry, alias: str, candidate: str, decision: GateDecision) -> None:
    """Carry out a decision on `candidate` (`adapter@N`) for `alias`, recording it as an event first."""
    detail = {"alias": alias, "candidate": candidate, "action": decision.action, "reason": decision.reason}
    registry.add_event(
        candidate, GATE_EVENT, f"{candidate} for {alias}: {decision.action} ({decision.reason})", detail
    )
    if decision.promote:
        registry.promote(alias, candidate, reason=f"{alias} -> {candidate}: {decision.reason}")
        metrics.PROMOTIONS.labels(alias).inc()
    else:
        registry.set_status(
            candidate, VersionStatus.REJECTED, reason=f"{candidate} rejected: {decision.reason}"
        )
        metrics.RETRAINS_REJECTED.labels(alias, decision.reject_reason or "not_better").inc()


def run_gate(
    registry: Registry,
    client: OpenAI,
    alias: str,
    candidate: str,
    *,
    recent: Sequence[Example],
    golden: Sequence[Example] = (),
    metric: str = "token_f1",
    golden_tolerance: float | None = None,
) -> GateDecision:
    """Score the live version and `candidate` through the gateway on the same data, decide, apply.

    A candidate the serving engines cannot serve (platform/adapters.py `check_promotable`) is
    rejected as `unservable` before anything is scored."""
    from tuneloop.platform.adapters import check_promotable
    from tuneloop.platform.artifacts import ArtifactStore

    try:
        check_promotable(registry.get_version(candidate), ArtifactStore())
    except TuneloopError as exc:  # a method vLLM cannot serve, weights it would refuse, a missing artifact
        decision = GateDecision(False, str(exc), "unservable")
        apply(registry, alias, candidate, decision)
        return decision
    tolerance = (
        settings.TUNELOOP_GATE_GOLDEN_TOLERANCE.get() if golden_tolerance is None else golden_tolerance
    )
    live_ref = registry.aliases().get(alias)
    scores: dict[str, dict[str, float]] = {candidate: {}, **({live_ref: {}} if live_ref else {})}
    max_tokens = settings.TUNELOOP_EVAL_MAX_TOKENS.get()
    for suite, examples in ((FEEDBACK, recent), (GOLDEN, golden)):
        if not examples:
            continue
        for ref in scores:
            result = evaluate(client, ref, examples, suite=suite, max_tokens=max_tokens, loss=False)
            record(registry, alias, result)
            if metric in result.scores:
                scores[ref][suite] = result.scores[metric]
    decision = decide(
        scores[candidate], scores[live_ref] if live_ref else None, metric=metric, golden_tolerance=tolerance
    )
    apply(registry, alias, candidate, decision)
    return decision
