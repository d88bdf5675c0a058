"""SQLAlchemy 2 tables of the registry: adapters, their versions, aliases, jobs, evaluations, events.

An *adapter* is a named line of fine-tuned variants of one base model; each training or import
adds a *version* (numbered 1, 2, ... per adapter). An *alias* is the name clients send as `model`;
it points at one version, and promotion moves it. Jobs, evaluations and events keep the lineage
and the history that `tuneloop adapters history` shows. *API keys* say who may call the gateway
and which aliases they may use; only a hash of each key is stored. *Files* and *fine-tuning jobs*
are what the gateway's OpenAI fine-tuning API (/v1/files, /v1/fine_tuning/jobs) created, each
owned by the key that created it; a fine-tuning job runs as a registry job (`jobs`).

The schema is owned by Alembic (registry/migrations); change a table here only together with a
new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class VersionStatus(StrEnum):
    CANDIDATE = "candidate"
    LIVE = "live"
    RETIRED = "retired"
    REJECTED = "rejected"


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    base_model: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list[Version]] = relationship(back_populates="adapter", order_by="Version.number")


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("adapter_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=VersionStatus.CANDIDATE)
    method: Mapped[str] = mapped_column(String(32))
    uri: Mapped[str] = mapped_column(String(1024))
    data_hash: Mapped[str | None] = mapped_column(String(128))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    adapter: Mapped[Adapter] = relationship(back_populates="versions")

    @property
    def ref(self) -> str:
        """The version's engine-side name, `adapter@number`, also accepted as `model` by clients."""
        return f"{self.adapter.name}@{self.number}"


class Alias(Base):
    __tablename__ = "aliases"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    version: Mapped[Version] = relationship(foreign_keys=[version_id])
    previous_version: Mapped[Version | None] = relationship(foreign_keys=[previous_version_id])


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    adapter_name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING)
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    suite: Mapped[str] = mapped_column(String(128))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    __tablename__ = "events"
    # An adapter's history is read every monitoring round, often only some kinds of it (migration 0004).
    __table_args__ = (Index("ix_events_adapter_kind", "adapter_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A gateway API key: the SHA-256 of the secret (never the secret), its scopes, admin or not.

    `scopes` lists aliases (or adapter names); a scope grants every alias and version of the adapter
    it names. `admin` keys may use every model and read the gateway's metrics.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class File(Base):
    """A file uploaded through POST /v1/files: its bytes live in the artifact store at `uri`."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int | None] = mapped_column(Integer, index=True)
    filename: Mapped[str] = mapped_column(String(256))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(String(1024))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FineTuningJob(Base):
    """A job created through POST /v1/fine_tuning/jobs: the request, its owner, and the registry job
    (`job_id`, the Ray submission id) that runs it; `error` is set when it failed before submission."""

    __tablename__ = "fine_tuning_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int | None] = mapped_column(Integer, index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    adapter_name: Mapped[str] = mapped_column(String(128), unique=True)
    model: Mapped[str] = mapped_column(String(512))
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_file: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
