"""The retrain step of the loop: the alias's last job spec on refreshed data, as a Ray job, then the gate.

`start` rebuilds the data of the live version's job (its splits, exactly as the job made them) and
refreshes it with what has been learnt since, the newest answer to a question winning:

* feedback that gives the right answer (monitoring/evaluation/feedback.py), the latest
  TUNELOOP_RETRAIN_FEEDBACK_LIMIT, split at the drift's *onset* (the feedback check's change point,
  else the live version's promotion): labels from before it, and labels since it;
* new data configured for the alias (TUNELOOP_RETRAIN_DATA_DIR/<alias>.jsonl), counted as recent.

A question whose newest answer differs from the one the previous data gave has *changed*. The files:

* `test.jsonl`: the previous job's test split with the newest answers, so the retrain's own test
  score is on today's truth and no question of it is ever trained on;
* `gate.jsonl`: the new ground truth: recent labels of test questions, topped up with recent labels
  of other questions (chosen by a stable hash of the question) until TUNELOOP_RETRAIN_GATE_SHARE of
  the recently labelled questions are held out of training, and no more: every question held out
  is one the retrain cannot learn from;
* `unchanged.jsonl`: the previous test split less the changed questions, for the gate's check that
  nothing that was right regressed;
* `train.jsonl`: the previous training and validation examples less every question with a newer
  answer or held out above (thinned to TUNELOOP_RETRAIN_REPLAY by the same stable hash), plus the
  remaining fresh examples. Replaying what is still true keeps the retrained version from
  forgetting it; leaving out what changed keeps the old answer from fighting the new one. Where
  recent labels replaced an answer on most of the questions asked again (`stale_answers`: a class
  whose rule changed), examples still giving that answer on questions nobody asked again are left
  out of every file: more likely wrong than right now.

No question of `train.jsonl` is in another file, and none is in it twice, so the job's leakage
check cannot refuse data the loop built itself. The spec is the previous one with these files
(validation is carved from train) and `output.parent` set to the live version: the same recipe and
hyperparameters that made the live version, on data that says today's truth. With
TUNELOOP_RETRAIN_WARM_START on, PEFT methods also get `output.init_from`: the retrain continues from
the live weights (which wants a lower learning rate than training from scratch). Everything is
written under
TUNELOOP_HOME/retrains/<alias>/<time>/ and submitted through the Ray Jobs API (platform/ray/submit.py).

`advance` follows the open retrains of an alias: when a job has ended it records `retrain.finished`
(a failure with the job's own error, naming the retrain's files rather than Ray's copies), and a job
that registered a candidate goes through the gate (monitoring/gate.py). The state lives in registry
events only, so a restarted control process picks up where the last one was.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tuneloop.monitoring import metrics
from tuneloop.monitoring.evaluation.suite import last_spec
from tuneloop.monitoring.policy import DRIFT_CHECKED, PROMOTED, RETRAIN_FINISHED, RETRAIN_STARTED, aware
from tuneloop.platform import settings
from tuneloop.platform.answers import normalize_answer
from tuneloop.platform.data.formats import Example, read_examples, reference_answer
from tuneloop.platform.errors import ConfigError, NotFoundError, TuneloopError

if TYPE_CHECKING:
    from openai import OpenAI

    from tuneloop.monitoring.capture import CaptureStore
    from tuneloop.monitoring.gate import GateDecision
    from tuneloop.platform.ray.client import JobsClient
    from tuneloop.platform.registry import Registry

log = logging.getLogger(__name__)
TRAIN_FILE, TEST_FILE, GATE_FILE, UNCHANGED_FILE, SPEC_FILE = (
    "train.jsonl",
    "test.jsonl",
    "gate.jsonl",
    "unchanged.jsonl",
    "job.yaml",
)
ONSET_DETECTOR = "feedback_cusum"  # the check whose drift decisions carry a change point
STALE_MIN = 5  # re-asked questions an old answer needs before it can count as mostly replaced


@dataclass
class RetrainData:
    """What a retrain trains and tests on, what the gate holds out, and the counts of each source."""

    train: list[Example]
    gate: list[Example]
    unchanged: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _share(example: Example) -> float:
    """A stable number in [0, 1) per question: the same question always gets the same number."""
    digest = hashlib.sha256(example.prompt_key().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _answer(example: Example) -> str | None:
    found = reference_answer(example)
    return None if found is None else normalize_answer(found)


def refresh(
    previous: Sequence[Example],
    previous_test: Sequence[Example],
    earlier: Sequence[Example],
    recent: Sequence[Example],
    *,
    replay: float,
    gate_share: float,
) -> RetrainData:
    """Merge the sources (module docstring). `earlier` and `recent` are fresh answers (labels from
    before and since the onset; new data counts as recent), each oldest first. Fresh examples of
    another format than the previous data are left out (one file holds one format) and counted."""
    first = [*previous[:1], *previous_test[:1]]
    fmt_name = first[0].format if first else None
    latest: dict[str, Example] = {}
    recent_keys: set[str] = set()
    other = 0
    for is_recent, group in ((False, earlier), (True, recent)):
        for ex in group:
            if fmt_name is not None and ex.format != fmt_name:
                other += 1
                continue
            key = ex.prompt_key()
            latest.pop(key, None)  # re-insert: the last answer to a question wins
            latest[key] = ex
            (recent_keys.add if is_recent else recent_keys.discard)(key)
    old_answers = {ex.prompt_key(): _answer(ex) for ex in (*earlier, *previous, *previous_test)}
    changed = {key for key, ex in latest.items() if key in old_answers and _answer(ex) != old_answers[key]}
    stale = stale_answers(old_answers, {k: _answer(ex) for k, ex in latest.items() if k in recent_keys})

    def doubtful(ex: Example) -> bool:  # an answer feedback mostly changed, on a question not asked since
        return ex.prompt_key() not in recent_keys and _answer(ex) in stale

    test_keys = {ex.prompt_key() for ex in previous_test}
    test = [t for ex in previous_test if not doubtful(t := latest.get(ex.prompt_key(), ex))]
    unchanged = [ex for ex in previous_test if ex.prompt_key() not in changed and not doubtful(ex)]
    # The gate's new ground truth: recent labels of test questions (held out anyway), topped up to
    # `gate_share` of all recently labelled questions with others, lowest stable hash first (so a
    # question held out once is held out again by the next retrain).
    recent_test = {key for key in latest if key in recent_keys and key in test_keys}
    others = sorted(
        (k for k in latest if k in recent_keys and k not in test_keys), key=lambda k: _share(latest[k])
    )
    extra = set(others[: max(0, round(gate_share * len(recent_keys)) - len(recent_test))])
    gate = [ex for key, ex in latest.items() if key in extra or key in recent_test]
    held = test_keys | {ex.prompt_key() for ex in gate}
    fresh = [ex for key, ex in latest.items() if key not in held and not doubtful(ex)]
    kept, seen = [], set()
    for ex in previous:
        key = ex.prompt_key()
        if key in latest or key in held or ex.key() in seen or doubtful(ex):
            continue
        seen.add(ex.key())
        kept.append(ex)
    # Thinned by the same stable hash (not a random draw): a retrain of a retrain keeps the same part.
    replayed = [ex for ex in kept if _share(ex) < replay] if replay < 1 else kept
    counts = {
        "previous": len(previous),
        "previous_superseded": sum(1 for ex in previous if ex.prompt_key() in latest),
        "previous_replayed": len(replayed),
        "changed": len(changed),
        "doubtful_left_out": sum(doubtful(ex) for ex in (*previous, *latest.values(), *previous_test)),
        "fresh": len(latest),
        "fresh_recent": len(recent_keys),
        "other_format": other,
        "held_out_for_gate": len(gate),
        "unchanged_for_gate": len(unchanged),
        "test": len(test),
        "train": len(replayed) + len(fresh),
    }
    return RetrainData(train=[*replayed, *fresh], gate=gate, unchanged=unchanged, test=test, counts=counts)


def stale_answers(old: dict[str, str | None], new: dict[str, str | None], least: int = STALE_MIN) -> set[str]:
    """Answers that recent labels mostly replaced: among the questions asked again since the onset
    whose earlier answer was A, at least half have another answer now (and at least `least` were
    asked). Where answers are classes (a team, a label), the rule changed for A as a whole, so an
    example still answering A that nobody checked again is more likely wrong than right: a retrain
    leaves it out rather than teach the old rule beside the new one. Free-text answers rarely repeat,
    so they seldom reach `least`."""
    flips: dict[str, list[bool]] = {}
    for key, answer in new.items():
        before = old.get(key)
        if key in old and before is not None:
            flips.setdefault(before, []).append(answer != before)
    return {a for a, seen in flips.items() if len(seen) >= least and 2 * sum(seen) >= len(seen)}


def drift_onset(registry: Registry, alias: str) -> datetime | None:
    """When the drift being retrained for began: the change point of the feedback check's latest
    drift decision since the live version went live, else that promotion; None if neither."""

    onset: datetime | None = None
    for event in registry.history(registry.adapter_of(alias)):
        detail = event.detail or {}
        if event.kind == PROMOTED:
            onset = aware(event.created_at)
        elif (
            event.kind == DRIFT_CHECKED
            and detail.get("alias") == alias
            and detail.get("detector") == ONSET_DETECTOR
            and detail.get("decision") == "drift"
            and detail.get("onset")
        ):
            onset = datetime.fromisoformat(str(detail["onset"]))
    return onset


def prepare(registry: Registry, store: CaptureStore, alias: str, folder: Path) -> RetrainData:
    """Write the retrain's spec and data files into `folder` (which must not exist)."""
    from tuneloop.monitoring.evaluation.feedback import labelled_with_times
    from tuneloop.platform.data.splits import make_splits
    from tuneloop.train import methods

    ref = registry.aliases().get(alias)
    if ref is None:
        raise NotFoundError(f"no alias named {alias!r}; see `tuneloop adapters list`")
    spec = last_spec(registry, ref)
    try:
        old = make_splits(spec.data, spec.task)
        previous, previous_test = [*old.train, *old.validation], old.test
    except TuneloopError as exc:  # the data is not reachable from here, or no longer what it was
        log.warning(
            "%s: the data of %s cannot be rebuilt here (%s); retraining on fresh data only", alias, ref, exc
        )
        previous, previous_test = [], []
    replay = settings.TUNELOOP_RETRAIN_REPLAY.get()
    new_path = settings.TUNELOOP_RETRAIN_DATA_DIR.get() / f"{alias}.jsonl"
    new = read_examples(new_path, task=spec.task) if new_path.is_file() else []
    limit = settings.TUNELOOP_RETRAIN_FEEDBACK_LIMIT.get()
    labelled = labelled_with_times(store, alias)[-limit:]
    onset = drift_onset(registry, alias)
    earlier = [ex for at, ex in labelled if onset is not None and aware(at) < onset]
    since = [ex for at, ex in labelled if onset is None or aware(at) >= onset]
    data = refresh(
        previous if replay > 0 else [],
        previous_test,
        earlier,
        [*new, *since],
        replay=replay,
        gate_share=settings.TUNELOOP_RETRAIN_GATE_SHARE.get(),
    )
    if len(data.train) < spec.data.min_examples:
        raise ConfigError(
            f"{alias}: a retrain would have {len(data.train)} training examples, fewer than the "
            f"{spec.data.min_examples} its spec requires ({_counts(data.counts)})"
        )
    # Only what the spec set: a full dump sets every method option, which parse_spec refuses.
    raw = spec.model_dump(mode="json", exclude_unset=True)
    raw["data"]["train"] = TRAIN_FILE
    raw["data"].pop("validation", None)  # carved from train: the old file may hold changed answers
    if data.test:
        raw["data"]["test"] = TEST_FILE
    else:
        raw["data"].pop("test", None)
    raw["output"]["parent"] = ref
    if settings.TUNELOOP_RETRAIN_WARM_START.get() and isinstance(
        methods.get(spec.method.name), methods.PeftMethod
    ):
        raw["output"]["init_from"] = ref  # continue from the live weights: learns the change, forgets less
    # Written to a scratch name and renamed last: a half-written folder is never a retrain.
    scratch = folder.with_name(folder.name + ".partial")
    scratch.mkdir(parents=True)
    files = (
        (TRAIN_FILE, data.train),
        (TEST_FILE, data.test),
        (GATE_FILE, data.gate),
        (UNCHANGED_FILE, data.unchanged),
    )
    for name, examples in files:
        lines = (json.dumps(ex.record(), ensure_ascii=False) + "\n" for ex in examples)
        (scratch / name).write_text("".join(lines), encoding="utf-8")
    since_text = onset.isoformat(timespec="seconds") if onset else "the start"
    header = (
        f"# Retrain of {ref} for alias {alias} by tuneloop's monitoring loop; drift onset {since_text}.\n"
        f"# Run again with: tuneloop jobs submit {folder / SPEC_FILE}\n"
    )
    (scratch / SPEC_FILE).write_text(header + yaml.safe_dump(raw, sort_keys=False))
    scratch.rename(folder)
    return data


def start(
    registry: Registry, store: CaptureStore, alias: str, reason: str, *, address: str | None = None
) -> str:
    """Prepare and submit a retrain of `alias`; record `retrain.started`; return the Ray job id."""
    from tuneloop.platform.ray.submit import new_job_id, submit_spec

    ref = registry.aliases().get(alias)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder = settings.TUNELOOP_HOME.get() / "retrains" / alias / stamp
    data = prepare(registry, store, alias, folder)
    adapter = registry.adapter_of(alias)
    job_id = new_job_id(adapter)
    detail = {
        "alias": alias,
        "job_id": job_id,
        "parent": ref,
        "folder": str(folder),
        "counts": data.counts,
        "reason": reason,
    }
    # Recorded before submitting, so a job Ray runs is never one the loop does not know about; a
    # submission that fails closes the record at once.
    message = f"{alias}: retraining {ref} as job {job_id} ({_counts(data.counts)}): {reason}"
    registry.add_event(adapter, RETRAIN_STARTED, message, detail)
    try:
        submit_spec(folder / SPEC_FILE, address=address, job_id=job_id)
    except Exception as exc:
        _finish(registry, alias, job_id, "FAILED", None, f"job {job_id} could not be submitted: {exc}")
        metrics.RETRAINS_FAILED.labels(alias).inc()
        raise
    metrics.RETRAINS_STARTED.labels(alias).inc()
    log.info("%s", message)
    return job_id


def open_retrains(registry: Registry, alias: str) -> list[dict[str, Any]]:
    """The `retrain.started` details of `alias` that no `retrain.finished` has closed, oldest first."""

    started: dict[str, dict[str, Any]] = {}
    kinds = (RETRAIN_STARTED, RETRAIN_FINISHED)
    for event in registry.history(registry.adapter_of(alias), kinds=kinds):
        detail = event.detail or {}
        if detail.get("alias") != alias or not detail.get("job_id"):
            continue
        if event.kind == RETRAIN_STARTED:
            started[detail["job_id"]] = detail
        elif event.kind == RETRAIN_FINISHED:
            started.pop(detail["job_id"], None)
    return list(started.values())


def advance(
    registry: Registry, alias: str, jobs: JobsClient, client: OpenAI | None
) -> list[GateDecision | None]:
    """Close every open retrain of `alias` whose job has ended; gate each candidate it registered.

    Without a gateway client (no TUNELOOP_EVAL_KEY) a finished retrain stays open: its candidate
    cannot be compared yet. Returns one entry per retrain closed: the gate's decision, or None for
    a job that registered no candidate."""
    from tuneloop.monitoring.evaluation.suite import golden_suite
    from tuneloop.monitoring.gate import run_gate
    from tuneloop.platform.errors import TuneloopError
    from tuneloop.platform.ray.client import TERMINAL, JobNotFoundError
    from tuneloop.platform.ray.submit import record_outcome
    from tuneloop.platform.registry.tables import VersionStatus

    closed: list[GateDecision | None] = []
    for retrain in open_retrains(registry, alias):
        job_id = retrain["job_id"]
        try:
            status = str(record_outcome(jobs, job_id).status.value)
        except JobNotFoundError:
            status = "LOST"  # the cluster forgot it (a restarted head): it will never end
        except TuneloopError as exc:  # Ray unreachable: ask again next round
            log.warning("%s: cannot ask Ray about retrain job %s: %s", alias, job_id, exc)
            continue
        if status not in TERMINAL and status != "LOST":
            continue
        versions = [v for v in registry.list_versions(registry.adapter_of(alias)) if v.job_id == job_id]
        if status != "SUCCEEDED" or not versions:
            why = f"job {job_id} ended {status}" + ("" if versions else " without registering a version")
            error = _job_error(registry, job_id, Path(retrain["folder"]))
            _finish(registry, alias, job_id, status, None, why + (f": {error}" if error else ""))
            metrics.RETRAINS_FAILED.labels(alias).inc()
            closed.append(None)
            continue
        candidate = versions[-1]
        if candidate.status != VersionStatus.CANDIDATE:  # decided before a crash cut this round short
            _finish(registry, alias, job_id, status, candidate.ref, f"{candidate.ref} is {candidate.status}")
            continue
        if client is None:
            log.warning("%s: %s is ready, but the gate needs TUNELOOP_EVAL_KEY", alias, candidate.ref)
            continue
        folder = Path(retrain["folder"])
        recent, unchanged = (_read_if_any(folder / name) for name in (GATE_FILE, UNCHANGED_FILE))
        golden = golden_suite(alias)
        decision = run_gate(
            registry,
            client,
            alias,
            candidate.ref,
            recent=recent,
            unchanged=unchanged,
            golden=golden.examples if golden else (),
        )
        # Closed only once the gate has decided: a gate that fails leaves the retrain open for the next round.
        _finish(registry, alias, job_id, status, candidate.ref, f"job {job_id} registered {candidate.ref}")
        metrics.RETRAINS_SUCCEEDED.labels(alias).inc()
        closed.append(decision)
    return closed


def _finish(
    registry: Registry, alias: str, job_id: str, status: str, candidate: str | None, why: str
) -> None:

    detail = {"alias": alias, "job_id": job_id, "status": status, "candidate": candidate}
    registry.add_event(registry.adapter_of(alias), RETRAIN_FINISHED, f"{alias}: {why}", detail)


def _read_if_any(path: Path) -> list[Example]:
    return read_examples(path) if path.is_file() and path.stat().st_size else []


def _job_error(registry: Registry, job_id: str, folder: Path) -> str:
    """The error the job's driver recorded, naming the retrain's own files instead of Ray's copies."""
    from tuneloop.platform.ray.submit import staged_sources, unstage

    try:
        error = str((registry.get_job(job_id).result or {}).get("error") or "")
    except NotFoundError:
        return ""
    spec = folder / SPEC_FILE
    return unstage(error, staged_sources(spec)) if spec.is_file() else error


def _counts(counts: dict[str, int]) -> str:
    return (
        f"{counts['train']} to train on: {counts['previous_replayed']} of {counts['previous']} previous "
        f"replayed, {counts['fresh']} fresh answers ({counts['changed']} changed); "
        f"held out for the gate: {counts['held_out_for_gate']} new, {counts['unchanged_for_gate']} unchanged"
    )
