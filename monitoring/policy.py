"""The drift policy: when sustained drift should start a retrain, within a cool-down and a budget.

Pure logic over the recorded history of an alias (its registry events), so every decision can be
replayed and tested without a clock, a database or a cluster. The history holds these kinds of
observation, oldest first:

* a drift check (`drift.checked`, decision `drift`, `no_drift` or `not_enough_data`),
* a drift alert from Alertmanager (`drift.alert`, status `firing` or `resolved`),
* a retrain the loop started (`retrain.started`; marked failed when its job registered no version),
* a retrain that failed: its job ended without a candidate (`retrain.finished` without one), or it
  could not be built or submitted (`retrain.failed`),
* a promotion of any version of the alias's adapter (`alias.promoted`).

The *streak* counts drift evidence since the last reset, per source (a detector, or an alert by
name), since detectors watch different things: a concept drift leaves prompt lengths as they were,
so a `no_drift` from the length check must not erase what the feedback check found. A `drift` check
or a firing alert adds one to its source's streak; a `no_drift` check or a resolved alert resets
its source to 0; a retrain that trained or a promotion resets every source (a retrain's result is
judged by the gate, a newly promoted version has shown no drift yet, and only new evidence should
start another). A `not_enough_data` check neither counts nor resets: it is no evidence either way
(monitoring/drift/base.py), so a quiet night of little traffic does not erase a drift seen before
it, nor add to it. The policy acts on the longest streak.

A retrain is due when the streak reaches `sustain`, the last retrain started more than `cooldown`
ago, and fewer than `daily_budget` retrains started in the last 24 hours. A retrain that failed
(nothing was trained, or nothing registered) spends neither: the drift it answered is still there,
so it is retried, after `backoff`, doubled for each failure in a row, at most `cooldown`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

from tuneloop.platform import settings

if TYPE_CHECKING:
    from tuneloop.platform.registry.tables import Event

DRIFT_CHECKED: Final = "drift.checked"
DRIFT_ALERT: Final = "drift.alert"
RETRAIN_STARTED: Final = "retrain.started"
RETRAIN_FINISHED: Final = "retrain.finished"
RETRAIN_FAILED: Final = "retrain.failed"  # a due retrain that could not be built or submitted
PROMOTED: Final = "alias.promoted"  # Registry.promote's event
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Observation:
    """One event of the history the policy reads; `value` is the check's decision or the alert's status."""

    kind: Literal["drift.checked", "drift.alert", "retrain.started", "retrain.failed", "alias.promoted"]
    at: datetime
    value: str = ""  # a check's decision, an alert's status, "failed" for a retrain that trained nothing
    source: str = ""  # the detector of a check, the alertname of an alert


@dataclass(frozen=True)
class PolicyDecision:
    retrain: bool
    reason: str
    streak: int


@dataclass(frozen=True)
class RetrainPolicy:
    """Sustained drift (`sustain` checks in a row), at most one retrain per `cooldown`, and at most
    `daily_budget` in any 24 hours."""

    sustain: int = 3
    cooldown: timedelta = timedelta(hours=6)
    daily_budget: int = 2
    backoff: timedelta = timedelta(minutes=5)
    lookback: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        if self.sustain < 1:
            raise ValueError(f"sustain={self.sustain}: at least 1 drift check must be required")
        if self.daily_budget < 0 or min(self.cooldown, self.backoff, self.lookback) < timedelta(0):
            raise ValueError(
                f"daily_budget={self.daily_budget}, cooldown={self.cooldown}, backoff={self.backoff} and "
                f"lookback={self.lookback} must be >= 0"
            )

    @classmethod
    def from_settings(cls) -> RetrainPolicy:
        return cls(
            sustain=settings.TUNELOOP_RETRAIN_SUSTAIN.get(),
            cooldown=timedelta(seconds=settings.TUNELOOP_RETRAIN_COOLDOWN_S.get()),
            daily_budget=settings.TUNELOOP_RETRAIN_DAILY_BUDGET.get(),
            backoff=timedelta(seconds=settings.TUNELOOP_RETRAIN_BACKOFF_S.get()),
            lookback=timedelta(seconds=settings.TUNELOOP_RETRAIN_LOOKBACK_S.get()),
        )

    def reads_from(self, now: datetime) -> datetime:
        """The oldest history `decide` needs: the lookback, and never less than the daily budget's
        24 hours and the cool-down."""
        return aware(now) - max(self.lookback, DAY, self.cooldown)

    def decide(self, history: Sequence[Observation], now: datetime) -> PolicyDecision:
        """Whether to start a retrain now, and why (or why not)."""
        now = aware(now)
        streak = drift_streak(history)
        if streak < self.sustain:
            why = f"drift seen {streak} time(s) in a row, {self.sustain} needed"
            return PolicyDecision(False, why, streak)
        retrains = [aware(o.at) for o in history if o.kind == RETRAIN_STARTED and o.value != "failed"]
        failures = failures_in_a_row(history)
        if failures:
            wait = min(self.backoff * 2 ** (len(failures) - 1), self.cooldown)
            since = now - failures[-1]
            if since < wait:
                why = (
                    f"retrying after {len(failures)} failed retrain(s) in a row: last {_ago(since)} ago, "
                    f"{_ago(wait - since)} to go"
                )
                return PolicyDecision(False, why, streak)
        if retrains and now - max(retrains) < self.cooldown:
            since = now - max(retrains)
            why = f"cooling down: last retrain {_ago(since)} ago, {_ago(self.cooldown - since)} to go"
            return PolicyDecision(False, why, streak)
        today = sum(1 for at in retrains if now - at < DAY)
        if today >= self.daily_budget:
            return PolicyDecision(
                False, f"daily budget spent: {today} of {self.daily_budget} retrains in the last 24h", streak
            )
        return PolicyDecision(True, f"drift sustained over {streak} checks (>= {self.sustain})", streak)


def failures_in_a_row(history: Iterable[Observation]) -> list[datetime]:
    """When each retrain failed since the last one that trained or the last promotion, oldest first."""
    found: list[datetime] = []
    for obs in history:
        if obs.kind == PROMOTED or (obs.kind == RETRAIN_STARTED and obs.value != "failed"):
            found = []
        elif obs.kind == RETRAIN_FAILED:
            found.append(aware(obs.at))
    return found


def drift_streak(history: Iterable[Observation]) -> int:
    """The longest run of drift evidence of one source since its last no_drift check or the last
    started retrain (see the module docstring)."""
    streaks: dict[tuple[str, str], int] = {}
    for obs in history:
        key = (obs.kind, obs.source)
        if obs.kind == PROMOTED or (obs.kind == RETRAIN_STARTED and obs.value != "failed"):
            streaks.clear()
        elif (obs.kind, obs.value) in ((DRIFT_CHECKED, "no_drift"), (DRIFT_ALERT, "resolved")):
            streaks[key] = 0
        elif (obs.kind == DRIFT_CHECKED and obs.value == "drift") or (
            obs.kind == DRIFT_ALERT and obs.value == "firing"
        ):
            streaks[key] = streaks.get(key, 0) + 1
    return max(streaks.values(), default=0)


def observations(events: Iterable[Event], alias: str) -> list[Observation]:
    """The policy's view of an adapter's registry events: those of `alias`, oldest first."""
    events = list(events)
    failed_jobs = {
        str(e.detail.get("job_id"))
        for e in events
        if e.kind == RETRAIN_FINISHED
        and e.detail
        and e.detail.get("alias") == alias
        and not e.detail.get("candidate")
    }
    found = []
    for event in events:
        detail: dict[str, Any] = event.detail or {}
        if event.kind == PROMOTED:  # a new version is live: drift seen on the old one is no evidence
            found.append(Observation(PROMOTED, event.created_at))
            continue
        if detail.get("alias") != alias:
            continue
        if event.kind == DRIFT_CHECKED:
            decision, detector = str(detail.get("decision", "")), str(detail.get("detector", ""))
            found.append(Observation(DRIFT_CHECKED, event.created_at, decision, detector))
        elif event.kind == DRIFT_ALERT:
            status, name = str(detail.get("status", "")), str(detail.get("alertname", ""))
            found.append(Observation(DRIFT_ALERT, event.created_at, status, name))
        elif event.kind == RETRAIN_STARTED:
            failed = str(detail.get("job_id")) in failed_jobs
            found.append(Observation(RETRAIN_STARTED, event.created_at, "failed" if failed else ""))
        elif event.kind == RETRAIN_FAILED or (event.kind == RETRAIN_FINISHED and not detail.get("candidate")):
            found.append(Observation(RETRAIN_FAILED, event.created_at))
    return found


def aware(at: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; the registry writes UTC.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _ago(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"
