"""The registry's side of the OpenAI fine-tuning API: uploaded files and fine-tuning jobs, by owner.

Rows are owned by the API key that created them (`key_id`); `owner=None` below means an admin
asking, who sees every row. A row another key owns is not found, exactly like one that does not
exist, so ids cannot be probed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from tuneloop.platform.errors import NotFoundError
from tuneloop.platform.registry.registry import Registry
from tuneloop.platform.registry.tables import File, FineTuningJob, Job, JobStatus

OPEN = (JobStatus.PENDING, JobStatus.RUNNING)


def add_file(registry: Registry, file: File) -> File:
    with registry.transaction() as session:
        session.add(file)
    return file


def get_file(registry: Registry, file_id: str, owner: int | None) -> File:
    with registry.transaction() as session:
        row = session.get(File, file_id)
        if row is None or (owner is not None and row.key_id != owner):
            raise NotFoundError(f"no file {file_id!r}")
        return row


def list_files(registry: Registry, owner: int | None, purpose: str | None, limit: int) -> list[File]:
    """Newest first."""
    with registry.transaction() as session:
        query = select(File).order_by(File.created_at.desc(), File.id.desc()).limit(limit)
        if owner is not None:
            query = query.where(File.key_id == owner)
        if purpose:
            query = query.where(File.purpose == purpose)
        return list(session.scalars(query))


def count_files(registry: Registry, owner: int | None) -> int:
    with registry.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(File).where(File.key_id == owner)) or 0)


def delete_file(registry: Registry, file_id: str, owner: int | None) -> File:
    with registry.transaction() as session:
        row = session.get(File, file_id)
        if row is None or (owner is not None and row.key_id != owner):
            raise NotFoundError(f"no file {file_id!r}")
        session.delete(row)
        return row


def add_ft_job(registry: Registry, job: FineTuningJob) -> FineTuningJob:
    with registry.transaction() as session:
        session.add(job)
    return job


def update_ft_job(registry: Registry, ft_id: str, **values: Any) -> None:
    with registry.transaction() as session:
        row = session.get(FineTuningJob, ft_id)
        if row is None:
            raise NotFoundError(f"no fine-tuning job {ft_id!r}")
        for name, value in values.items():
            setattr(row, name, value)


def get_ft_job(registry: Registry, ft_id: str, owner: int | None) -> tuple[FineTuningJob, Job | None]:
    """The fine-tuning job and the registry job that runs it (None before it was submitted)."""
    with registry.transaction() as session:
        row = session.get(FineTuningJob, ft_id)
        if row is None or (owner is not None and row.key_id != owner):
            raise NotFoundError(f"no fine-tuning job {ft_id!r}")
        return row, session.get(Job, row.job_id) if row.job_id else None


def list_ft_jobs(
    registry: Registry, owner: int | None, *, after: str | None, limit: int
) -> list[tuple[FineTuningJob, Job | None]]:
    """Newest first; `after`: the id of the last job of the previous page (it must be visible)."""
    with registry.transaction() as session:
        query = select(FineTuningJob, Job).outerjoin(Job, FineTuningJob.job_id == Job.id)
        if owner is not None:
            query = query.where(FineTuningJob.key_id == owner)
        if after:
            anchor = session.get(FineTuningJob, after)
            if anchor is None or (owner is not None and anchor.key_id != owner):
                raise NotFoundError(f"no fine-tuning job {after!r}")
            older = (FineTuningJob.created_at < anchor.created_at) | (
                (FineTuningJob.created_at == anchor.created_at) & (FineTuningJob.id < anchor.id)
            )
            query = query.where(older)
        query = query.order_by(FineTuningJob.created_at.desc(), FineTuningJob.id.desc()).limit(limit)
        return [(ft, job) for ft, job in session.execute(query).tuples()]


def active_jobs(registry: Registry, owner: int | None) -> int:
    """Jobs of this key still queued or running (a job that failed before submission is not)."""
    with registry.transaction() as session:
        query = (
            select(func.count())
            .select_from(FineTuningJob)
            .join(Job, FineTuningJob.job_id == Job.id)
            .where(Job.status.in_([str(s) for s in OPEN]))
        )
        if owner is not None:
            query = query.where(FineTuningJob.key_id == owner)
        return int(session.scalar(query) or 0)


def owners(registry: Registry) -> dict[str, int]:
    """Adapter name -> the key that fine-tuned it through the API (routing lets that key pin it)."""
    with registry.transaction() as session:
        query = select(FineTuningJob.adapter_name, FineTuningJob.key_id).where(
            FineTuningJob.key_id.isnot(None)
        )
        return {name: key for name, key in session.execute(query).tuples() if key is not None}
