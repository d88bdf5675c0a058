"""What a fine-tuning job is now: the registry job that runs it, checked against Ray, in OpenAI's terms.

    registry job pending   + Ray PENDING   -> queued
    registry job pending   + Ray RUNNING   -> validating_files (the driver checks the data)
    registry job running                   -> running (estimated_finish from the last validation)
    succeeded / failed / stopped           -> succeeded / failed / cancelled

A job still open in the registry whose Ray job has ended is closed with Ray's verdict
(`record_outcome`); one that Ray no longer knows at all (the head restarted and lost it) is closed as
failed with a message saying so, so no job stays `running` for ever; one whose submission never
completed (the gateway stopped during `jobs.create`) is closed as failed after UNSUBMITTED_AFTER_S.
Ray being unreachable changes nothing: the registry's view is shown until Ray answers again.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tuneloop.platform.errors import TuneloopError
from tuneloop.platform.ray.client import JobNotFoundError, JobsClient
from tuneloop.platform.ray.submit import record_outcome, unstage
from tuneloop.platform.registry import Registry, finetuning
from tuneloop.platform.registry.tables import Event, FineTuningJob, Job, JobStatus
from tuneloop.serve.errors import scrubbed
from tuneloop.serve.fine_tuning.protocol import Checkpoint, JobError, JobEvent, JobObject

log = logging.getLogger(__name__)
UNSUBMITTED_AFTER_S = 600
"""A job that has neither a Ray job nor an error this long after creation was being submitted by a
gateway that stopped (submission takes seconds): it is closed as failed, never left validating."""
UNSUBMITTED = "the gateway that was submitting this job stopped before it reached Ray; create it again"
LOST = "the Ray cluster no longer knows this job (its head restarted while the job ran); submit it again"
FINAL = {JobStatus.SUCCEEDED: "succeeded", JobStatus.FAILED: "failed", JobStatus.STOPPED: "cancelled"}


@dataclass
class View:
    """One fine-tuning job as read now: its row, its registry job, its events (oldest first)."""

    ft: FineTuningJob
    job: Job | None
    events: list[Event]
    ray_status: str | None = None

    @property
    def status(self) -> str:
        if self.ft.error:
            return "failed"
        if self.job is None:
            return "validating_files"
        if self.job.status in FINAL:
            return FINAL[JobStatus(self.job.status)]
        if self.job.status == JobStatus.RUNNING:
            return "running"
        return "validating_files" if self.ray_status == "RUNNING" else "queued"


def read(registry: Registry, ft: FineTuningJob, job: Job | None, *, check_ray: bool = True) -> View:
    """The job as it is now, its registry job reconciled with Ray first (blocking: a worker thread)."""
    ray_status = None
    if job is None and not ft.error and _age_s(ft.created_at) > UNSUBMITTED_AFTER_S:
        ft.error = {"code": "submission_failed", "message": UNSUBMITTED, "param": None}
        finetuning.update_ft_job(registry, ft.id, error=ft.error)
    if job is not None and job.status in finetuning.OPEN and check_ray:
        try:
            ray_status = str(record_outcome(JobsClient(), job.id).status.value)
        except JobNotFoundError:
            registry.add_job_event(job.id, "job.failed", LOST)
            registry.finish_job(job.id, JobStatus.FAILED, {"error": LOST})
        except TuneloopError as exc:  # unreachable: show what the registry says
            log.warning("cannot ask Ray about %s: %s", job.id, exc)
        job = registry.get_job(job.id)
    events = registry.job_events(job.id) if job is not None else []
    return View(ft, job, events, ray_status)


def as_object(view: View) -> JobObject:
    ft, job = view.ft, view.job
    request, result = ft.request, (job.result if job else {}) or {}
    status = view.status
    training = result.get("training") or {}
    hp = request["hyperparameters"]
    return JobObject(
        id=ft.id,
        created_at=_ts(ft.created_at),
        error=_error(view) if status == "failed" else None,
        fine_tuned_model=result.get("version") if status == "succeeded" else None,
        finished_at=_ts(job.finished_at) if job and job.finished_at else None,
        hyperparameters=hp,
        model=ft.model,
        result_files=[ft.result_file] if ft.result_file else [],
        seed=request["seed"],
        status=status,
        trained_tokens=training.get("tokens") if status == "succeeded" else None,
        training_file=request["training_file"],
        validation_file=request.get("validation_file"),
        estimated_finish=_estimated_finish(view) if status == "running" else None,
        metadata=request.get("metadata"),
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        suffix=request.get("suffix"),
        user_provided_suffix=request.get("suffix"),
    )


def events_of(view: View) -> list[JobEvent]:
    """Newest first: creation, then the registry job's events (validations carry their metrics)."""
    found = [
        JobEvent(
            id=f"ftevent-{view.ft.id}-0",
            created_at=_ts(view.ft.created_at),
            level="info",
            message=f"Created fine-tuning job {view.ft.id}: validating {view.ft.request['training_file']}",
        )
    ]
    if view.ft.error:
        found.append(
            JobEvent(
                id=f"ftevent-{view.ft.id}-1",
                created_at=_ts(view.ft.created_at),
                level="error",
                message=_error(view).message,
            )
        )
    for event in view.events:
        metrics = event.kind == "job.validation"
        found.append(
            JobEvent(
                id=f"ftevent-{event.id}",
                created_at=_ts(event.created_at),
                level="error" if event.kind == "job.failed" else "info",
                message=_shown(view, event.message),
                type="metrics" if metrics else "message",
                data=_step_metrics(event.detail) if metrics else None,
            )
        )
    return found[::-1]


def checkpoints_of(view: View) -> list[Checkpoint]:
    """One per validation, newest first; the published (best) one names the callable version."""
    result = (view.job.result if view.job else {}) or {}
    best = (result.get("training") or {}).get("best_step")
    version = result.get("version") if view.status == "succeeded" else None
    found = []
    for event in view.events:
        if event.kind != "job.validation":
            continue
        step = int(event.detail["step"])
        found.append(
            Checkpoint(
                id=f"ftckpt-{event.id}",
                created_at=_ts(event.created_at),
                fine_tuned_model_checkpoint=version if step == best else None,
                fine_tuning_job_id=view.ft.id,
                metrics=_step_metrics(event.detail),
                step_number=step,
            )
        )
    return found[::-1]


def metrics_csv(view: View) -> bytes:
    """The result file: one row per validation (step, train and validation loss)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["step", "train_loss", "valid_loss"])
    for event in view.events:
        if event.kind == "job.validation":
            m = _step_metrics(event.detail)
            writer.writerow([int(m["step"]), m.get("train_loss", ""), m.get("valid_loss", "")])
    return out.getvalue().encode()


def _step_metrics(detail: dict[str, Any]) -> dict[str, float]:
    pairs = {"step": "step", "train_loss": "loss", "valid_loss": "val_loss", "total_steps": "total_steps"}
    return {
        name: float(detail[key]) for name, key in pairs.items() if isinstance(detail.get(key), int | float)
    }


def _estimated_finish(view: View) -> int | None:
    started = next((e for e in view.events if e.kind == "job.started"), None)
    last = next((e for e in reversed(view.events) if e.kind == "job.validation"), None)
    if started is None or last is None:
        return None
    step, total = last.detail.get("step"), last.detail.get("total_steps")
    if not isinstance(step, int) or not isinstance(total, int) or step <= 0:
        return None
    elapsed = (last.created_at - started.created_at).total_seconds()
    return _ts(started.created_at) + int(elapsed * total / step)


def _error(view: View) -> JobError:
    if view.ft.error:
        return JobError(**{**view.ft.error, "message": scrubbed(view.ft.error["message"])})
    result = (view.job.result if view.job else {}) or {}
    message = str(result.get("error") or result.get("message") or "the training job failed")
    code = "invalid_training_file" if "fix and resubmit" in message else "training_failed"
    return JobError(
        code=code,
        message=_shown(view, message)[:4000],
        param="training_file" if code == "invalid_training_file" else None,
    )


def _shown(view: View, text: str) -> str:
    """A message from the cluster with staged data paths named by file id, internal paths hidden."""
    request = view.ft.request
    sources = {
        f"data/{key}/{fid}.jsonl": fid
        for key, fid in (("train", request["training_file"]), ("validation", request.get("validation_file")))
        if fid
    }
    return scrubbed(unstage(text, sources))


def _age_s(when: datetime) -> float:
    return (datetime.now(UTC) - (when if when.tzinfo else when.replace(tzinfo=UTC))).total_seconds()


def _ts(when: datetime) -> int:
    """Unix seconds; SQLite hands back naive datetimes, which the registry wrote in UTC."""
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())
