"""The fine-tuning jobs API: create, retrieve, list, cancel, events, checkpoints.

Every handler checks the key first (serve/auth/fine_tuning.py); a job another key created is the same
404 as one that does not exist (admin keys see all). A key may have TUNELOOP_FINE_TUNING_MAX_ACTIVE
jobs queued or running at once (checked and created under one lock per replica, so two concurrent
creates cannot both pass); one more is a 429. The result, `fine_tuned_model`, is the published
version `adapter@N` (status candidate, promoted to no alias): the creating key may call it at once,
because the registry records it as the adapter's owner (serve/routing). Before a job is shown as
succeeded, the replica's routing snapshot is refreshed if it does not have the version yet.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from fastapi import Request

from tuneloop.platform import settings
from tuneloop.platform.errors import NotFoundError
from tuneloop.platform.ray.client import JobsClient
from tuneloop.platform.ray.submit import record_outcome
from tuneloop.platform.registry import finetuning
from tuneloop.platform.registry.tables import File, FineTuningJob, JobStatus
from tuneloop.serve.auth.fine_tuning import fine_tuner, owner_filter
from tuneloop.serve.errors import OpenAIError, bad_request, model_not_found
from tuneloop.serve.files import serving as files
from tuneloop.serve.files.protocol import RESULTS_PURPOSE
from tuneloop.serve.fine_tuning import status
from tuneloop.serve.fine_tuning.protocol import (
    CheckpointList,
    CreateJob,
    EventList,
    JobList,
    JobObject,
)
from tuneloop.serve.fine_tuning.submit import hyperparameters_of, resolved, spec_of, submit
from tuneloop.serve.protocol import parse_json
from tuneloop.serve.replica import Replica
from tuneloop.serve.request.limits import read_body

_create_lock = asyncio.Lock()
_results_lock = asyncio.Lock()


def job_not_found(ft_id: str) -> OpenAIError:
    return OpenAIError(404, f"No fine-tuning job {ft_id}", param="fine_tuning_job_id", code="job_not_found")


async def create_job(request: Request) -> JobObject:
    principal = await fine_tuner(request)
    replica: Replica = request.app.state.replica
    body = parse_json(await read_body(request, replica.config.limits.max_body_bytes), CreateJob)
    hp = resolved(hyperparameters_of(body))  # a refused method type is a 400 before anything else
    if body.model not in replica.config.base.names():
        raise model_not_found(body.model)
    for param, file_id in (("training_file", body.training_file), ("validation_file", body.validation_file)):
        if file_id is not None:
            row = await files.find(request, file_id, param)
            if row.purpose != "fine-tune":
                raise bad_request(f"{file_id} was not uploaded with purpose fine-tune", param=param)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    adapter = f"{body.suffix or 'ft'}-{secrets.token_hex(3)}"
    spec = spec_of(body, base_model=replica.config.base.engine, adapter=adapter, seed=seed)
    record: dict[str, Any] = {
        "training_file": body.training_file,
        "validation_file": body.validation_file,
        "suffix": body.suffix,
        "seed": seed,
        "metadata": body.metadata,
        "hyperparameters": hp,
        "tuneloop": body.tuneloop.model_dump(exclude_unset=True) if body.tuneloop else None,
    }
    ft = FineTuningJob(
        id=f"ftjob-{secrets.token_hex(12)}",
        key_id=principal.key_id,
        adapter_name=adapter,
        model=body.model,
        request=record,
    )
    most = settings.TUNELOOP_FINE_TUNING_MAX_ACTIVE.get()
    async with _create_lock:
        active = await asyncio.to_thread(finetuning.active_jobs, replica.registry, principal.key_id)
        if active >= most:
            raise OpenAIError(
                429,
                f"This key has {active} fine-tuning jobs queued or running, its limit "
                f"(TUNELOOP_FINE_TUNING_MAX_ACTIVE={most}); wait for one to finish or cancel one.",
                type="rate_limit_error",
                code="too_many_active_jobs",
                headers={"Retry-After": "30"},
            )
        await asyncio.to_thread(finetuning.add_ft_job, replica.registry, ft)
        await asyncio.to_thread(submit, replica.registry, replica.store, ft.id, spec)
    return await _object(replica, ft.id, None, check_ray=False)


async def retrieve_job(request: Request, ft_id: str) -> JobObject:
    principal = await fine_tuner(request)
    return await _object(request.app.state.replica, ft_id, owner_filter(principal))


async def list_jobs(request: Request, after: str | None, limit: int) -> JobList:
    principal = await fine_tuner(request)
    if not 1 <= limit <= 100:
        raise bad_request("limit must be between 1 and 100", param="limit")
    replica: Replica = request.app.state.replica
    try:
        rows = await asyncio.to_thread(
            finetuning.list_ft_jobs, replica.registry, owner_filter(principal), after=after, limit=limit + 1
        )
    except NotFoundError:
        raise job_not_found(after or "") from None
    views = [await asyncio.to_thread(status.read, replica.registry, ft, job) for ft, job in rows[:limit]]
    return JobList(data=[await _finished(replica, v) for v in views], has_more=len(rows) > limit)


async def cancel_job(request: Request, ft_id: str) -> JobObject:
    principal = await fine_tuner(request)
    replica: Replica = request.app.state.replica
    view = await _view(replica, ft_id, owner_filter(principal))
    if view.status in ("succeeded", "failed"):
        raise bad_request(
            f"{ft_id} has already {view.status}; it cannot be cancelled",
            param="fine_tuning_job_id",
            code="job_not_cancellable",
        )
    if view.status != "cancelled" and view.job is not None:
        await asyncio.to_thread(_stop, replica, view.job.id)
    return await _object(replica, ft_id, owner_filter(principal))


def _stop(replica: Replica, job_id: str) -> None:
    """Stop the Ray job and wait (a little) for Ray to say so; the registry job is closed as stopped."""
    client = JobsClient()
    client.stop(job_id)
    client.wait(job_id, timeout=30, interval=0.5)
    record_outcome(client, job_id)
    if replica.registry.get_job(job_id).status in finetuning.OPEN:
        replica.registry.add_job_event(job_id, "job.stopped", "cancelled through the fine-tuning API")
        replica.registry.finish_job(job_id, JobStatus.STOPPED, {"error": "cancelled"})


async def list_events(request: Request, ft_id: str, after: str | None, limit: int) -> EventList:
    principal = await fine_tuner(request)
    view = await _view(request.app.state.replica, ft_id, owner_filter(principal))
    return EventList(**_page(status.events_of(view), after, limit))


async def list_checkpoints(request: Request, ft_id: str, after: str | None, limit: int) -> CheckpointList:
    principal = await fine_tuner(request)
    view = await _view(request.app.state.replica, ft_id, owner_filter(principal))
    page = _page(status.checkpoints_of(view), after, limit)
    data = page["data"]
    return CheckpointList(
        **page, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


def _page(items: list[Any], after: str | None, limit: int) -> dict[str, Any]:
    if not 1 <= limit <= 100:
        raise bad_request("limit must be between 1 and 100", param="limit")
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            raise bad_request(f"after={after!r} is not an id of this list", param="after")
        items = items[ids.index(after) + 1 :]
    return {"data": items[:limit], "has_more": len(items) > limit}


async def _view(replica: Replica, ft_id: str, owner: int | None, *, check_ray: bool = True) -> status.View:
    try:
        ft, job = await asyncio.to_thread(finetuning.get_ft_job, replica.registry, ft_id, owner)
    except NotFoundError:
        raise job_not_found(ft_id) from None
    return await asyncio.to_thread(status.read, replica.registry, ft, job, check_ray=check_ray)


async def _object(replica: Replica, ft_id: str, owner: int | None, *, check_ray: bool = True) -> JobObject:
    return await _finished(replica, await _view(replica, ft_id, owner, check_ray=check_ray))


async def _finished(replica: Replica, view: status.View) -> JobObject:
    """The job object; a job that just succeeded gets its metrics file, and this replica's routing sees
    its version, before it is shown as succeeded."""
    if view.status == "succeeded":
        version = ((view.job.result if view.job else {}) or {}).get("version")
        snapshot = replica.follower.snapshot
        if version and (version not in snapshot.versions or view.ft.adapter_name not in snapshot.owners):
            await replica.follower.refresh()
        if view.ft.result_file is None:
            async with _results_lock:
                view.ft.result_file = await asyncio.to_thread(_results_file, replica, view)
    return status.as_object(view)


def _results_file(replica: Replica, view: status.View) -> str:
    ft, _ = finetuning.get_ft_job(replica.registry, view.ft.id, None)
    if ft.result_file:  # another request wrote it meanwhile
        return ft.result_file
    data = status.metrics_csv(view)
    file_id = f"file-{secrets.token_hex(12)}"
    row = File(
        id=file_id,
        key_id=ft.key_id,
        filename=f"{ft.id}-metrics.csv",
        purpose=RESULTS_PURPOSE,
        bytes=len(data),
        uri=replica.store.fs.unstrip_protocol(files.file_path(replica.store, file_id)),
    )
    files.store_file(replica.registry, replica.store, row, data)
    finetuning.update_ft_job(replica.registry, ft.id, result_file=file_id)
    return file_id
