"""The capture store: sampled requests and feedback in SQL, and the queries the drift loop uses.

Any SQLAlchemy URL works (SQLite under TUNELOOP_HOME by default). The tables are created when
missing; they only ever gain rows. Results are detached ORM objects the caller may keep.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from tuneloop.monitoring.capture.schema import FeedbackIn, RequestRecord
from tuneloop.monitoring.capture.tables import CaptureBase, CapturedRequest, Feedback
from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError, NotFoundError


class UnknownRequestError(NotFoundError):
    """Feedback names a request id the capture store does not hold."""


class CaptureStore:
    """Sampled requests and feedback in their own database (default: TUNELOOP_CAPTURE_DB_URL)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or settings.TUNELOOP_CAPTURE_DB_URL.get()
        self.engine = _make_engine(self.url)
        _create_tables(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def add_requests(self, records: Sequence[RequestRecord]) -> int:
        """Store `records` in one transaction; returns how many were new (known request ids are skipped)."""
        rows = [CapturedRequest(**asdict(record)) for record in records]
        try:
            with self._sessions.begin() as session:
                session.add_all(rows)
            return len(rows)
        except IntegrityError:
            # A retried request id somewhere in the batch: store the others one by one.
            return sum(self._add_one(CapturedRequest(**asdict(record))) for record in records)

    def _add_one(self, row: CapturedRequest) -> bool:
        try:
            with self._sessions.begin() as session:
                session.add(row)
            return True
        except IntegrityError:
            return False

    def get(self, request_id: str) -> CapturedRequest | None:
        with self._sessions() as session:
            return session.scalar(select(CapturedRequest).where(CapturedRequest.request_id == request_id))

    def add_feedback(self, feedback: FeedbackIn) -> Feedback:
        """Store validated feedback; `UnknownRequestError` if its request was never captured.

        The writer stores requests a moment after they were served: an API handler that gets
        `UnknownRequestError` for a fresh id may `CaptureWriter.flush()` and try once more.
        """
        with self._sessions.begin() as session:
            known = session.scalar(
                select(CapturedRequest.id).where(CapturedRequest.request_id == feedback.request_id)
            )
            if known is None:
                raise UnknownRequestError(
                    f"no captured request with id {feedback.request_id!r}: feedback can only be given on "
                    "requests the gateway captured (see TUNELOOP_CAPTURE_SAMPLE_RATE)"
                )
            row = Feedback(**feedback.model_dump(exclude={"request_id"}), request_id=feedback.request_id)
            session.add(row)
        return row

    def recent(
        self,
        alias: str,
        since: datetime,
        until: datetime | None = None,
        *,
        version: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[CapturedRequest]:
        """Requests served under `alias` in [since, until), oldest first; optionally one version/status."""
        query = select(CapturedRequest).where(
            CapturedRequest.alias == alias, CapturedRequest.created_at >= since
        )
        if until is not None:
            query = query.where(CapturedRequest.created_at < until)
        if version is not None:
            query = query.where(CapturedRequest.version == version)
        if status is not None:
            query = query.where(CapturedRequest.status == status)
        query = query.order_by(CapturedRequest.created_at, CapturedRequest.id).limit(limit)
        with self._sessions() as session:
            return list(session.scalars(query))

    def with_feedback(
        self, alias: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[tuple[CapturedRequest, Feedback]]:
        """(request, feedback) pairs for `alias`, one per feedback, by feedback time, oldest first."""
        query = (
            select(CapturedRequest, Feedback)
            .join(Feedback, Feedback.request_id == CapturedRequest.request_id)
            .where(CapturedRequest.alias == alias)
        )
        if since is not None:
            query = query.where(Feedback.created_at >= since)
        if until is not None:
            query = query.where(Feedback.created_at < until)
        with self._sessions() as session:
            return [(request, feedback) for request, feedback in session.execute(query.order_by(Feedback.id))]

    def session(self) -> Session:
        """A plain session for queries the helpers above do not cover."""
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()


def _create_tables(engine: Engine) -> None:
    """Create the tables where missing. Several replicas share one store on Kubernetes and may start
    together: on PostgreSQL two CREATE TABLEs can race (a duplicate table or type), so the loser
    checks again, and by then the tables are there."""
    for attempt in range(3):
        try:
            CaptureBase.metadata.create_all(engine)
            return
        except (ProgrammingError, IntegrityError):
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def _make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"capture store URL {url!r} is not a SQLAlchemy URL (e.g. sqlite:///capture.db)"
        ) from None
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        # One shared connection, or every thread (the writer's included) would see its own empty database.
        return create_engine(parsed, poolclass=StaticPool, connect_args={"check_same_thread": False})
    Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    # WAL: the drift loop reads while the writer appends; foreign keys are off by default in SQLite.
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
