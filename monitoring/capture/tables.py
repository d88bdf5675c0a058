"""SQLAlchemy tables of the capture store: sampled requests and the feedback given on them.

They live in a database of their own (TUNELOOP_CAPTURE_DB_URL), apart from the registry, so a
flood of captured traffic never competes with promotions and lookups for the registry's locks.
The drift loop reads them by alias and time window. Rows leave only by retention
(`CaptureStore.prune`: TUNELOOP_CAPTURE_RETENTION_DAYS and TUNELOOP_CAPTURE_MAX_ROWS), and a
request's feedback is replaced, never added to, when it is given again.

Who asked and who judged are recorded as the registry id of the API key (`api_keys.id`, never the
secret or its hash), so feedback can be checked against the requester and weighed by who gave it.
Databases created before these columns existed gain them on open (store.py `_upgrade_schema`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite keeps no time zone and hands back naive values; storing naive UTC and re-attaching UTC
    on the way out makes window queries and comparisons behave the same on SQLite and Postgres.
    Naive values given to it are taken to be UTC already.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


FEEDBACK_UNIQUE_INDEX = "ux_capture_feedback_request_id"
LEGACY_FEEDBACK_INDEX = "ix_capture_feedback_request_id"
"""The non-unique index older databases have instead (several feedback rows per request)."""


class CaptureStatus(StrEnum):
    """How the captured request ended."""

    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"


class CaptureBase(DeclarativeBase):
    # A metadata of its own: create_all on the capture database never touches registry tables.
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class CapturedRequest(CaptureBase):
    """One sampled request as the gateway served it."""

    __tablename__ = "capture_requests"
    __table_args__ = (Index("ix_capture_requests_alias_created", "alias", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    alias: Mapped[str] = mapped_column(String(128))
    """The name the client sent as `model`."""
    version: Mapped[str] = mapped_column(String(128))
    """The adapter version the alias resolved to when the request was served."""
    prompt: Mapped[str] = mapped_column(Text)
    """The prompt (or rendered chat) after redaction."""
    answer: Mapped[str] = mapped_column(Text)
    latency_s: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=CaptureStatus.OK)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    key_id: Mapped[int | None] = mapped_column(Integer)
    """Registry id of the API key that made the request (None: captured before keys were recorded)."""


class Feedback(CaptureBase):
    """A user's judgement of one captured request: one per request, the latest replaces the earlier."""

    __tablename__ = "capture_feedback"
    __table_args__ = (Index(FEEDBACK_UNIQUE_INDEX, "request_id", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("capture_requests.request_id"))
    label: Mapped[str | None] = mapped_column(String(64))
    rating: Mapped[int | None] = mapped_column(Integer)
    corrected_answer: Mapped[str | None] = mapped_column(Text)
    """After redaction, like captured prompts and answers."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    key_id: Mapped[int | None] = mapped_column(Integer)
    """Registry id of the API key that gave the feedback (None: given before keys were recorded)."""
    by_admin: Mapped[bool | None] = mapped_column(Boolean)
    """Whether that key was an admin key when it gave the feedback."""
