"""The retrain step of the loop: the alias's last job spec on refreshed data, as a Ray job, then the gate.

`start` builds the training data of a retrain from three sources, newest answer winning:

* the previous job's training file, less every example whose question (`Example.prompt_key`) has
  a newer answer below, and thinned to TUNELOOP_RETRAIN_REPLAY of itself (1: all of it; 0: none,
  for a concept drift where the old answers are wrong now);
* new data configured for the alias (TUNELOOP_RETRAIN_DATA_DIR/<alias>.jsonl);
* captured traffic whose feedback gives the right answer (monitoring/evaluation/feedback.py), the
  latest TUNELOOP_RETRAIN_FEEDBACK_LIMIT of them.

A share of the new and feedback examples (TUNELOOP_RETRAIN_GATE_SHARE, chosen by a hash of the
question, so the same question always lands on the same side) is held out of training: it is the
"recent labelled data" the gate scores both versions on. The spec is the previous one with the new
training file and `output.parent` set to the live version; it is written with its data under
TUNELOOP_HOME/retrains/<alias>/<time>/ and submitted through the Ray Jobs API (platform/jobs.py).

`advance` follows the open retrains of an alias: when a job has ended it records `retrain.finished`,
and a job that registered a candidate goes through the gate (monitoring/gate.py), which promotes it
(the gateways hot-load it) or rejects it with the reason. The state lives in registry events only
(`retrain.started` opens a retrain, `retrain.finished` closes it), so a restarted control process
picks up where the last one was.
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
from tuneloop.monitoring.policy import RETRAIN_STARTED
from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError, NotFoundError
from tuneloop.train.data.formats import Example, read_examples

if TYPE_CHECKING:
    from openai import OpenAI

    from tuneloop.monitoring.capture import CaptureStore
    from tuneloop.monitoring.gate import GateDecision
    from tuneloop.platform.rayjobs import JobsClient
    from tuneloop.platform.registry import Registry

log = logging.getLogger(__name__)
RETRAIN_FINISHED = "retrain.finished"
TRAIN_FILE, GATE_FILE, SPEC_FILE = "train.jsonl", "gate.jsonl", "job.yaml"


@dataclass
class RetrainData:
    """What a retrain trains on, what the gate holds out, and how many examples came from where."""

    train: list[Example]
    gate: list[Example]
    counts: dict[str, int] = field(default_factory=dict)


def _share(example: Example) -> float:
    """A stable number in [0, 1) per question: the same question always gets the same number."""
    digest = hashlib.sha256(example.prompt_key().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def refresh(
    previous: Sequence[Example],
    new: Sequence[Example],
    feedback: Sequence[Example],
    *,
    replay: float,
    gate_share: float,
) -> RetrainData:
    """Merge the three sources (module docstring); examples of another format than `previous` are left
    out (one file holds one format) and counted."""
    fmt = previous[0].format if previous else None
    fresh = [ex for ex in (*new, *feedback) if fmt is None or ex.format == fmt]
    latest: dict[str, Example] = {}
    for ex in fresh:  # feedback after new data, each oldest first: the last answer to a question wins
        latest.pop(ex.prompt_key(), None)
        latest[ex.prompt_key()] = ex
    # The gate scores on the newest answers too: an outdated one would contradict it on the same question.
    gate = [ex for ex in latest.values() if _share(ex) < gate_share]
    newer = {key: ex for key, ex in latest.items() if _share(ex) >= gate_share}
    kept = [ex for ex in previous if ex.prompt_key() not in latest]
    # Thinned by the same stable hash (not by a random draw): a retrain of a retrain keeps the same part.
    replayed = [ex for ex in kept if _share(ex) < replay] if replay < 1 else kept
    counts = {
        "previous": len(previous),
        "previous_superseded": len(previous) - len(kept),
        "previous_replayed": len(replayed),
        "new": len(new),
        "feedback": len(feedback),
        "other_format": len(new) + len(feedback) - len(fresh),
        "held_out_for_gate": len(gate),
        "train": len(replayed) + len(newer),
    }
    return RetrainData(train=[*replayed, *newer.values()], gate=gate, counts=counts)


def prepare(registry: Registry, store: CaptureStore, alias: str, folder: Path) -> RetrainData:
    """Write the retrain's spec, training file and gate file into `folder` (which must not exist)."""
    from tuneloop.monitoring.evaluation.feedback import labelled_examples

    ref = registry.aliases().get(alias)
    if ref is None:
        raise NotFoundError(f"no alias named {alias!r}; see `tuneloop adapters list`")
    spec = last_spec(registry, ref)
    replay = settings.TUNELOOP_RETRAIN_REPLAY.get()
    # With replay 0 nothing of the previous file is kept, so it need not be reachable from here.
    previous = read_examples(spec.data.train, task=spec.task) if replay > 0 else []
    new_path = settings.TUNELOOP_RETRAIN_DATA_DIR.get() / f"{alias}.jsonl"
    new = read_examples(new_path, task=spec.task) if new_path.is_file() else []
    data = refresh(
        previous,
        new,
        _latest(labelled_examples(store, alias), settings.TUNELOOP_RETRAIN_FEEDBACK_LIMIT.get()),
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
    raw["output"]["parent"] = ref
    # Written to a scratch name and renamed last: a half-written folder is never a retrain.
    scratch = folder.with_name(folder.name + ".partial")
    scratch.mkdir(parents=True)
    for name, examples in ((TRAIN_FILE, data.train), (GATE_FILE, data.gate)):
        lines = (json.dumps(ex.record(), ensure_ascii=False) + "\n" for ex in examples)
        (scratch / name).write_text("".join(lines), encoding="utf-8")
    header = f"# Retrain of {ref} for alias {alias}, written by tuneloop's monitoring loop.\n"
    (scratch / SPEC_FILE).write_text(header + yaml.safe_dump(raw, sort_keys=False))
    scratch.rename(folder)
    return data


def start(
    registry: Registry, store: CaptureStore, alias: str, reason: str, *, address: str | None = None
) -> str:
    """Prepare and submit a retrain of `alias`; record `retrain.started`; return the Ray job id."""
    from tuneloop.monitoring.control.loop import adapter_of
    from tuneloop.platform.jobs import new_job_id, submit_spec

    ref = registry.aliases().get(alias)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder = settings.TUNELOOP_HOME.get() / "retrains" / alias / stamp
    data = prepare(registry, store, alias, folder)
    adapter = adapter_of(registry, alias)
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
    from tuneloop.monitoring.control.loop import adapter_of

    started: dict[str, dict[str, Any]] = {}
    for event in registry.history(adapter_of(registry, alias)):
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
    from tuneloop.monitoring.control.loop import adapter_of
    from tuneloop.monitoring.evaluation.suite import golden_suite
    from tuneloop.monitoring.gate import run_gate
    from tuneloop.platform.errors import TuneloopError
    from tuneloop.platform.jobs import record_outcome
    from tuneloop.platform.rayjobs import TERMINAL, JobNotFoundError
    from tuneloop.platform.registry.models import VersionStatus

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
        versions = [v for v in registry.list_versions(adapter_of(registry, alias)) if v.job_id == job_id]
        if status != "SUCCEEDED" or not versions:
            why = f"job {job_id} ended {status}" + ("" if versions else " without registering a version")
            _finish(registry, alias, job_id, status, None, why)
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
        recent = (
            read_examples(Path(retrain["folder"]) / GATE_FILE)
            if retrain.get("counts", {}).get("held_out_for_gate")
            else []
        )
        golden = golden_suite(alias)
        decision = run_gate(
            registry, client, alias, candidate.ref, recent=recent, golden=golden.examples if golden else ()
        )
        # Closed only once the gate has decided: a gate that fails leaves the retrain open for the next round.
        _finish(registry, alias, job_id, status, candidate.ref, f"job {job_id} registered {candidate.ref}")
        metrics.RETRAINS_SUCCEEDED.labels(alias).inc()
        closed.append(decision)
    return closed


def _finish(
    registry: Registry, alias: str, job_id: str, status: str, candidate: str | None, why: str
) -> None:
    from tuneloop.monitoring.control.loop import adapter_of

    detail = {"alias": alias, "job_id": job_id, "status": status, "candidate": candidate}
    registry.add_event(adapter_of(registry, alias), RETRAIN_FINISHED, f"{alias}: {why}", detail)


def _latest(examples: list[Example], limit: int) -> list[Example]:
    return examples[-limit:] if limit > 0 else []


def _counts(counts: dict[str, int]) -> str:
    return (
        f"{counts['train']} to train on: {counts['previous_replayed']} of {counts['previous']} previous, "
        f"{counts['new']} new, {counts['feedback']} from feedback; {counts['held_out_for_gate']} held out "
        "for the gate"
    )
