"""The capture store: sampled requests and feedback in SQL, and the queries the drift loop uses.

Any SQLAlchemy URL works (SQLite under TUNELOOP_HOME by default; a new SQLite file is created
readable by its owner only). The tables are created when missing and older ones gain the columns
added since (`_upgrade_schema`). Rows leave only by retention (`prune`, which the writer runs), and
a request holds one feedback: a later one replaces it. Results are detached ORM objects the caller
may keep. The engine never puts statement parameters (prompts, answers) into its error messages,
so a logged database error shows no captured text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, delete, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.schema import Column, CreateIndex

from tuneloop.monitoring.capture.schema import FeedbackIn, RequestRecord
from tuneloop.monitoring.capture.tables import (
    FEEDBACK_UNIQUE_INDEX,
    LEGACY_FEEDBACK_INDEX,
    CaptureBase,
    CapturedRequest,
    Feedback,
)
from tuneloop.platform import settings
from tuneloop.platform.errors import NotFoundError
from tuneloop.platform.sql import open_engine

RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))
REQUESTS = CaptureBase.metadata.tables[CapturedRequest.__tablename__]


class UnknownRequestError(NotFoundError):
    """Feedback names a request id the capture store does not hold."""


class CaptureStore:
    """Sampled requests and feedback in their own database (default: TUNELOOP_CAPTURE_DB_URL)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or settings.TUNELOOP_CAPTURE_DB_URL.get()
        self.engine = open_engine(self.url, "capture store")
        _create_tables(self.engine)
        _upgrade_schema(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def add_requests(self, records: Sequence[RequestRecord]) -> int:
        """Store `records` in one transaction; returns how many were new (known request ids are skipped).

        A plain multi-row INSERT, not ORM objects: the writer may share a process with the engine
        (`serve --in-engine`), and this costs about half as much per request (BENCHMARKS.md).
        """
        rows = [{name: getattr(record, name) for name in RECORD_FIELDS} for record in records]
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(REQUESTS), rows)
            return len(rows)
        except IntegrityError:
            # A retried request id somewhere in the batch: store the others one by one.
            return sum(self._add_one(row) for row in rows)

    def _add_one(self, row: dict[str, Any]) -> bool:
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(REQUESTS), [row])
            return True
        except IntegrityError:
            return False

    def get(self, request_id: str) -> CapturedRequest | None:
        with self._sessions() as session:
            return session.scalar(select(CapturedRequest).where(CapturedRequest.request_id == request_id))

    def add_feedback(
        self, feedback: FeedbackIn, *, key_id: int | None = None, by_admin: bool = False
    ) -> Feedback:
        """Store validated feedback given by API key `key_id`, replacing any earlier feedback on the
        same request; `UnknownRequestError` if its request was never captured.

        Checking that the key may give it (serve/feedback) is the caller's job; who gave it is kept so
        training trusts only what TUNELOOP_FEEDBACK_TRUST names (monitoring/evaluation/feedback.py).
        The writer stores requests a moment after they were served: an API handler that gets
        `UnknownRequestError` for a fresh id may `CaptureWriter.flush()` and try once more.
        """
        fields = feedback.model_dump(exclude={"request_id"})
        for attempt in range(3):
            try:
                with self._sessions.begin() as session:
                    # The request's row locked (PostgreSQL; SQLite serialises writers anyway): two
                    # feedbacks on one request replace each other in turn instead of racing.
                    known = session.scalar(
                        select(CapturedRequest.id)
                        .where(CapturedRequest.request_id == feedback.request_id)
                        .with_for_update()
                    )
                    if known is None:
                        raise UnknownRequestError(
                            f"no captured request with id {feedback.request_id!r}: feedback can only be "
                            "given on requests the gateway captured (see TUNELOOP_CAPTURE_SAMPLE_RATE)"
                        )
                    # Delete, then insert: the new feedback gets a new id and time, so "latest
                    # feedback first" orderings see it as the newest.
                    session.execute(delete(Feedback).where(Feedback.request_id == feedback.request_id))
                    row = Feedback(**fields, request_id=feedback.request_id, key_id=key_id, by_admin=by_admin)
                    session.add(row)
                return row
            except IntegrityError:
                # Another feedback on the same request was inserted in between (unique index): retry,
                # replacing that one.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def prune(
        self, *, max_age_days: float | None = None, max_rows: int | None = None, now: datetime | None = None
    ) -> int:
        """Delete captured requests (and their feedback) older than `max_age_days`, then the oldest
        beyond `max_rows`; 0 or None means no limit. Returns how many requests went."""
        removed = 0
        if max_age_days:
            cutoff = (now or datetime.now(UTC)) - timedelta(days=max_age_days)
            removed += self._delete_requests(CapturedRequest.created_at < cutoff)
        if max_rows:
            with self._sessions() as session:
                # The newest request beyond the limit (ids grow with insertion): it and older ones go.
                threshold = session.scalar(
                    select(CapturedRequest.id).order_by(CapturedRequest.id.desc()).offset(max_rows).limit(1)
                )
            if threshold is not None:
                removed += self._delete_requests(CapturedRequest.id <= threshold)
        return removed

    def _delete_requests(self, condition: ColumnElement[bool]) -> int:
        doomed = select(CapturedRequest.request_id).where(condition)
        with self._sessions.begin() as session:
            session.execute(delete(Feedback).where(Feedback.request_id.in_(doomed)))
            result = session.execute(delete(CapturedRequest).where(condition))
        return int(getattr(result, "rowcount", 0) or 0)

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


def _upgrade_schema(engine: Engine) -> None:
    """Bring tables made by an older tuneloop to the current shape; a no-op on current ones.

    `create_all` creates missing tables but never alters existing ones, so: add each column the
    models have and the table lacks (all of them nullable), and give feedback its one-per-request
    unique index, keeping the latest feedback of a request that has several. Safe when several
    processes open the same database at once: each step tolerates another having done it.
    """
    tables = CaptureBase.metadata.tables
    for table in (tables[CapturedRequest.__tablename__], tables[Feedback.__tablename__]):
        present = {c["name"] for c in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                _add_column(engine, table.name, column)
    indexes = {i["name"]: i for i in inspect(engine).get_indexes(Feedback.__tablename__)}
    if FEEDBACK_UNIQUE_INDEX in indexes:
        return
    with engine.begin() as connection:
        connection.execute(
            text(
                "DELETE FROM capture_feedback WHERE id NOT IN "
                "(SELECT MAX(id) FROM capture_feedback GROUP BY request_id)"
            )
        )
        index = next(i for i in tables[Feedback.__tablename__].indexes if i.name == FEEDBACK_UNIQUE_INDEX)
        connection.execute(CreateIndex(index, if_not_exists=True))
        connection.execute(text(f"DROP INDEX IF EXISTS {LEGACY_FEEDBACK_INDEX}"))


def _add_column(engine: Engine, table: str, column: Column[Any]) -> None:
    kind = column.type.compile(dialect=engine.dialect)
    try:
        with engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column.name} {kind}"))
    except (OperationalError, ProgrammingError):
        # Another process added it first; anything else shows up here again.
        if column.name not in {c["name"] for c in inspect(engine).get_columns(table)}:
            raise
