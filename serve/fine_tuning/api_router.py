"""/v1/fine_tuning/jobs: the openai SDK's `fine_tuning.jobs.create/retrieve/list/cancel/list_events`
and `fine_tuning.jobs.checkpoints.list`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tuneloop.serve.fine_tuning import serving
from tuneloop.serve.fine_tuning.protocol import CheckpointList, EventList, JobList, JobObject

router = APIRouter()


@router.post("/v1/fine_tuning/jobs")
async def create(request: Request) -> JobObject:
    return await serving.create_job(request)


@router.get("/v1/fine_tuning/jobs")
async def list_(request: Request, after: str | None = None, limit: int = 20) -> JobList:
    return await serving.list_jobs(request, after, limit)


@router.get("/v1/fine_tuning/jobs/{ft_id}")
async def retrieve(request: Request, ft_id: str) -> JobObject:
    return await serving.retrieve_job(request, ft_id)


@router.post("/v1/fine_tuning/jobs/{ft_id}/cancel")
async def cancel(request: Request, ft_id: str) -> JobObject:
    return await serving.cancel_job(request, ft_id)


@router.get("/v1/fine_tuning/jobs/{ft_id}/events")
async def events(request: Request, ft_id: str, after: str | None = None, limit: int = 20) -> EventList:
    return await serving.list_events(request, ft_id, after, limit)


@router.get("/v1/fine_tuning/jobs/{ft_id}/checkpoints")
async def checkpoints(
    request: Request, ft_id: str, after: str | None = None, limit: int = 10
) -> CheckpointList:
    return await serving.list_checkpoints(request, ft_id, after, limit)
