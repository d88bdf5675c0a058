"""Registry operations: every change that touches several rows happens in one transaction.

The gateway, the training jobs and the drift loop all go through `Registry`; none of them writes
tables directly. A failure anywhere inside an operation rolls the whole operation back, so there
is never a version without its adapter, or an alias moved without its event.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tuneloop.platform import settings
from tuneloop.platform.errors import ConflictError, DatabaseUnreachableError, NotFoundError, StaleAliasError
from tuneloop.platform.refs import VersionRef, adapter_name
from tuneloop.platform.registry import db
from tuneloop.platform.registry.tables import (
    Adapter,
    Alias,
    ApiKey,
    Evaluation,
    Event,
    Job,
    JobStatus,
    Version,
    VersionStatus,
    utcnow,
)

_CAS_ATTEMPTS = 20
"""How often a promotion or rollback without `expected` re-reads an alias that moved under it."""


class _AliasMoved(Exception):
    """Internal: the alias changed between our read and our conditional update; read again."""


def _check_expected(alias: str, row: Alias | None, expected: str | None) -> None:
    if expected is None:
        return
    current = row.version.ref if row is not None else ""
    if current != expected:
        raise StaleAliasError(
            f"alias {alias!r} points at {current or 'nothing'}, not {expected or 'nothing'} as expected: "
            "it was promoted or rolled back meanwhile; nothing was changed, look again "
            "(`tuneloop adapters history`) and retry against the live version"
        )


class Registry:
    """The registry behind one SQLAlchemy URL, migrated to the current schema on open."""

    def __init__(self, url: str | None = None, *, engine: Engine | None = None) -> None:
        self.engine = engine or db.make_engine(url)
        try:
            db.upgrade(self.engine)
        except OperationalError as exc:
            # One line a user can act on, never the traceback (nor the URL's password).
            where = self.engine.url.render_as_string(hide_password=True)
            reason = " ".join(str(exc.orig or exc).split())
            raise DatabaseUnreachableError(
                f"cannot open the registry at {where}: {settings.redact_url(reason)} (TUNELOOP_DB_URL)"
            ) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose changes commit together at the end, or not at all."""
        with self._sessions.begin() as session:
            yield session

    # -- versions

    def add_version(
        self,
        adapter: str,
        *,
        base_model: str,
        method: str,
        store: Callable[[int], str],
        data_hash: str | None = None,
        job_id: str | None = None,
        parent: str | None = None,
        metrics: dict[str, Any] | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> Version:
        """Add the next version of `adapter` (created on first use) with status `candidate`.

        `store(number)` writes the artifacts for the assigned version number and returns their URI;
        it runs inside the transaction, so if it fails no row is written, and if the rows cannot be
        written the caller gets the error after its artifacts were stored (they stay unreferenced).
        """
        try:
            with self.transaction() as session:
                row = session.scalar(select(Adapter).where(Adapter.name == adapter))
                if row is None:
                    row = Adapter(name=adapter, base_model=base_model)
                    session.add(row)
                    session.flush()
                elif row.base_model != base_model:
                    raise ConflictError(
                        f"adapter {adapter!r} is trained on {row.base_model!r}, not {base_model!r}: "
                        "use a new adapter name for another base model"
                    )
                last = session.scalar(select(func.max(Version.number)).where(Version.adapter_id == row.id))
                number = (last or 0) + 1
                parent_row = self._resolve(session, parent) if parent else None
                version = Version(
                    adapter=row,
                    number=number,
                    status=VersionStatus.CANDIDATE,
                    method=method,
                    uri=store(number),
                    data_hash=data_hash,
                    job_id=job_id,
                    parent_id=parent_row.id if parent_row else None,
                    metrics=metrics or {},
                    manifest=manifest or {},
                )
                session.add(version)
                session.flush()
                self._event(session, row, "version.added", f"{adapter}@{number} added ({method})")
                return version
        except IntegrityError as exc:
            raise ConflictError(
                f"could not add a version of {adapter!r} (concurrent publish?): {exc.orig}"
            ) from None

    def get_version(self, ref: str) -> Version:
        """A version by `adapter@N`, or the version an alias points at."""
        with self.transaction() as session:
            version = self._resolve(session, ref)
            _ = version.adapter  # loaded while the session is open
            return version

    def list_versions(self, adapter: str | None = None) -> list[Version]:
        with self.transaction() as session:
            query = select(Version).join(Adapter).order_by(Adapter.name, Version.number)
            if adapter is not None:
                query = query.where(Adapter.name == adapter)
            versions = list(session.scalars(query))
            for version in versions:
                _ = version.adapter
            if adapter is not None and not versions:
                raise NotFoundError(f"no adapter named {adapter!r}; see `tuneloop adapters list`")
            return versions

    def set_status(self, ref: str, status: VersionStatus, reason: str = "") -> None:
        with self.transaction() as session:
            version = self._resolve(session, ref)
            version.status = status
            self._event(session, version.adapter, f"version.{status}", reason or f"{version.ref} {status}")

    # -- aliases

    def promote(self, alias: str, ref: str, reason: str = "", *, expected: str | None = None) -> Version:
        """Point `alias` at version `ref`; the version it pointed at becomes the rollback target.

        A compare-and-set: the alias row is locked (PostgreSQL, `SELECT ... FOR UPDATE`) and moved by an
        `UPDATE ... WHERE version_id = <the version read>` in the same transaction, so two concurrent
        promotions never leave two versions live or a wrong rollback target; the later one re-reads
        and applies on top. `expected` is the `adapter@N` the caller compared against (a gate, an
        operator who looked first): if the alias points elsewhere by then, nothing changes and
        `StaleAliasError` names both. `expected=""` requires that the alias does not exist yet.
        """
        for _ in range(_CAS_ATTEMPTS):
            try:
                return self._promote_once(alias, ref, reason, expected)
            except _AliasMoved:
                continue  # the next attempt re-reads; with `expected` it then raises StaleAliasError
        raise ConflictError(f"alias {alias!r} kept moving under concurrent promotions; try again")

    def _promote_once(self, alias: str, ref: str, reason: str, expected: str | None) -> Version:
        creating = False
        try:
            with self.transaction() as session:
                row = self._locked_alias(session, alias)
                _check_expected(alias, row, expected)
                version = self._resolve(session, ref)
                if row is None:
                    creating = True
                    row = Alias(name=alias, adapter_id=version.adapter_id, version_id=version.id)
                    session.add(row)
                else:
                    if row.adapter_id != version.adapter_id:
                        raise ConflictError(
                            f"alias {alias!r} belongs to another adapter than {version.ref!r}"
                        )
                    old_id, old_previous = row.version_id, row.previous_version_id
                    if old_id != version.id:
                        self._move_alias(session, row, old_id, old_previous, version.id, old_id)
                        session.get_one(Version, old_id).status = VersionStatus.RETIRED
                    else:
                        # Already there: still only if it stays there, or a promotion that moved it
                        # meanwhile would be joined by this version marked live too.
                        self._move_alias(session, row, old_id, old_previous, old_id, old_previous)
                version.status = VersionStatus.LIVE
                session.flush()
                self._event(session, version.adapter, "alias.promoted", reason or f"{alias} -> {version.ref}")
                return version
        except IntegrityError:
            if not creating:
                raise
            # Another promotion created the alias first (unique name): re-read and apply on top of it.
            raise _AliasMoved() from None

    def rollback(self, alias: str, reason: str = "", *, expected: str | None = None) -> Version:
        """Point `alias` back at the version it pointed at before the last promotion.

        A compare-and-set like `promote`: `expected` (the `adapter@N` the caller saw live) makes a
        rollback fail with `StaleAliasError` instead of undoing a promotion it never saw.
        """
        for _ in range(_CAS_ATTEMPTS):
            try:
                return self._rollback_once(alias, reason, expected)
            except _AliasMoved:
                continue
        raise ConflictError(f"alias {alias!r} kept moving under concurrent promotions; try again")

    def _rollback_once(self, alias: str, reason: str, expected: str | None) -> Version:
        with self.transaction() as session:
            row = self._locked_alias(session, alias)
            if row is None:
                raise NotFoundError(f"no alias named {alias!r}")
            _check_expected(alias, row, expected)
            if row.previous_version_id is None:
                raise ConflictError(f"alias {alias!r} has no earlier version to roll back to")
            current_id, previous_id = row.version_id, row.previous_version_id
            self._move_alias(session, row, current_id, previous_id, previous_id, current_id)
            current = session.get_one(Version, current_id)
            previous = session.get_one(Version, previous_id)
            current.status = VersionStatus.RETIRED
            previous.status = VersionStatus.LIVE
            self._event(
                session, previous.adapter, "alias.rolled_back", reason or f"{alias} -> {previous.ref}"
            )
            return previous

    @staticmethod
    def _locked_alias(session: Session, alias: str) -> Alias | None:
        # FOR UPDATE: PostgreSQL makes a concurrent promoter wait here and then read the moved row;
        # SQLite ignores it, and the conditional UPDATE in _move_alias is what keeps it right there.
        query = select(Alias).where(Alias.name == alias).with_for_update()
        return session.scalar(query.execution_options(populate_existing=True))

    @staticmethod
    def _move_alias(
        session: Session,
        row: Alias,
        seen_id: int,
        seen_previous: int | None,
        new_id: int,
        new_previous: int | None,
    ) -> None:
        """Move the alias only if it still points where it did when read; else `_AliasMoved`."""
        moved = session.execute(
            update(Alias)
            .where(
                Alias.id == row.id,
                Alias.version_id == seen_id,
                Alias.previous_version_id.is_(None)
                if seen_previous is None
                else Alias.previous_version_id == seen_previous,
            )
            .values(version_id=new_id, previous_version_id=new_previous, updated_at=utcnow()),
            execution_options={"synchronize_session": False},
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise _AliasMoved()
        row.version_id, row.previous_version_id = new_id, new_previous
        session.expire(row, ["version", "previous_version", "updated_at"])

    def aliases(self) -> dict[str, str]:
        """Every alias and the `adapter@N` it points at."""
        with self.transaction() as session:
            rows = session.scalars(select(Alias)).all()
            return {row.name: row.version.ref for row in rows}

    def adapter_of(self, alias: str) -> str:
        """The adapter of the version `alias` points at; the alias's own name when it points at none
        (an alias's first version is trained under the alias's name)."""
        ref = self.aliases().get(alias)
        return adapter_name(ref) if ref else alias

    # -- jobs, evaluations, events

    def add_job(self, job_id: str, adapter: str, spec: dict[str, Any]) -> None:
        with self.transaction() as session:
            session.add(Job(id=job_id, adapter_name=adapter, spec=spec))

    def get_job(self, job_id: str) -> Job:
        """A training job by its id (the Ray submission id for jobs from `tuneloop jobs submit`)."""
        with self.transaction() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r} in the registry")
            return job

    def running_jobs(self) -> list[Job]:
        """Jobs that started and have not ended, oldest first."""
        with self.transaction() as session:
            query = select(Job).where(Job.status == JobStatus.RUNNING).order_by(Job.created_at)
            return list(session.scalars(query))

    def finish_job(self, job_id: str, status: JobStatus, result: dict[str, Any] | None = None) -> None:
        with self.transaction() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r} in the registry")
            job.status, job.result, job.finished_at = status, result or {}, utcnow()

    def start_job(self, job_id: str, adapter: str, spec: dict[str, Any]) -> None:
        """Mark a job running, recording it first where nobody has.

        `tuneloop jobs submit` records its jobs before submitting them (that row and its spec stay);
        a plain `ray job submit` or a local `tuneloop train` does not. A finished job is not restarted.
        """
        with self.transaction() as session:
            job = session.get(Job, job_id)
            if job is None:
                job = Job(id=job_id, adapter_name=adapter, spec=spec)
                session.add(job)
            elif job.adapter_name != adapter:
                raise ConflictError(f"job {job_id!r} trains {job.adapter_name!r}, not {adapter!r}")
            elif job.status not in (JobStatus.PENDING, JobStatus.RUNNING):
                raise ConflictError(f"job {job_id!r} already ended ({job.status}); give a new job id")
            job.status = JobStatus.RUNNING

    def add_job_event(
        self, job_id: str, kind: str, message: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Record an event of a training job (detail carries `job_id`); it also shows in the history of
        the job's adapter once that adapter exists."""
        with self.transaction() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r} in the registry")
            adapter = session.scalar(select(Adapter).where(Adapter.name == job.adapter_name))
            session.add(
                Event(
                    adapter_id=adapter.id if adapter else None,
                    kind=kind,
                    message=message,
                    detail={**(detail or {}), "job_id": job_id},
                )
            )

    def job_events(self, job_id: str) -> list[Event]:
        """The events of one training job, oldest first."""
        with self.transaction() as session:
            query = select(Event).where(Event.detail["job_id"].as_string() == job_id).order_by(Event.id)
            return list(session.scalars(query))

    def add_evaluation(self, ref: str, suite: str, metrics: dict[str, Any]) -> None:
        with self.transaction() as session:
            version = self._resolve(session, ref)
            session.add(Evaluation(version_id=version.id, suite=suite, metrics=metrics))
            self._event(session, version.adapter, "evaluation", f"{version.ref} on {suite}", metrics)

    def last_evaluated(self, ref: str, suites: Collection[str]) -> datetime | None:
        """When `ref` was last evaluated on one of `suites` (UTC), or None if never."""
        with self.transaction() as session:
            version = self._resolve(session, ref)
            query = select(func.max(Evaluation.created_at)).where(
                Evaluation.version_id == version.id, Evaluation.suite.in_(list(suites))
            )
            found = session.scalar(query)
            return None if found is None else found if found.tzinfo else found.replace(tzinfo=UTC)

    def add_event(self, ref: str, kind: str, message: str, detail: dict[str, Any] | None = None) -> None:
        """Record an event in the history of the adapter behind `ref` (an alias, `adapter@N`, or an
        adapter name): drift checks, alerts, retrains and gate decisions of the monitoring loop."""
        with self.transaction() as session:
            adapter = session.scalar(select(Adapter).where(Adapter.name == ref))
            if adapter is None:
                adapter = self._resolve(session, ref).adapter
            self._event(session, adapter, kind, message, detail)

    def history(
        self, adapter: str, *, kinds: Collection[str] | None = None, since: datetime | None = None
    ) -> list[Event]:
        """The events of `adapter`, oldest first: only of `kinds` and from `since` on, where given."""
        with self.transaction() as session:
            row = session.scalar(select(Adapter).where(Adapter.name == adapter))
            if row is None:
                raise NotFoundError(f"no adapter named {adapter!r}; see `tuneloop adapters list`")
            query = select(Event).where(Event.adapter_id == row.id)
            if kinds is not None:
                query = query.where(Event.kind.in_(kinds))
            if since is not None:
                query = query.where(Event.created_at >= since)
            return list(session.scalars(query.order_by(Event.id)))

    # -- API keys (the gateway's callers) and change detection

    def add_api_key(self, key_hash: str, prefix: str, *, scopes: list[str], admin: bool) -> ApiKey:
        """Store a key's hash; the secret itself is never written (platform/apikeys.py makes both)."""
        with self.transaction() as session:
            row = ApiKey(key_hash=key_hash, prefix=prefix, scopes=sorted(set(scopes)), admin=admin)
            session.add(row)
            what = "admin" if admin else "scopes " + ",".join(row.scopes)
            # An event, so that gateways following the registry notice the new key at their next poll.
            session.add(Event(adapter_id=None, kind="key.created", message=f"key {prefix}... ({what})"))
            session.flush()
            return row

    def api_keys(self) -> list[ApiKey]:
        """Every key that is not revoked."""
        with self.transaction() as session:
            return list(session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))))

    def revoke_api_key(self, prefix: str) -> ApiKey:
        """Revoke the unrevoked key shown as `prefix` (`tuneloop keys list`); gateways refuse it from
        their next registry poll. An unknown or ambiguous prefix is an error, and nothing changes."""
        with self.transaction() as session:
            rows = list(
                session.scalars(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None)))
            )
            if not rows:
                raise NotFoundError(f"no active key {prefix!r}; see `tuneloop keys list`")
            if len(rows) > 1:
                raise ConflictError(
                    f"{len(rows)} active keys share the prefix {prefix!r}: revoke by another way"
                )
            rows[0].revoked_at = utcnow()
            session.add(Event(adapter_id=None, kind="key.revoked", message=f"key {prefix}... revoked"))
            session.flush()
            return rows[0]

    def find_api_key(self, key_hash: str) -> ApiKey | None:
        """The unrevoked key with this hash, or None."""
        with self.transaction() as session:
            query = select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            return session.scalar(query)

    def last_event_id(self) -> int:
        """Id of the newest event: every change a gateway follows (versions, aliases, keys) adds one,
        so a follower polls this one cheap number and reloads everything only when it moved."""
        with self.transaction() as session:
            return int(session.scalar(select(func.max(Event.id))) or 0)

    # -- internals

    def _resolve(self, session: Session, ref: str) -> Version:
        if "@" in ref:
            parsed = VersionRef.parse(ref)
            if parsed is None:
                raise NotFoundError(f"{ref!r} is not a version reference: expected ADAPTER@NUMBER")
            version = session.scalar(
                select(Version)
                .join(Adapter)
                .where(Adapter.name == parsed.adapter, Version.number == parsed.number)
            )
        else:
            alias = session.scalar(select(Alias).where(Alias.name == ref))
            version = alias.version if alias else None
        if version is None:
            raise NotFoundError(f"no version or alias {ref!r}; see `tuneloop adapters list`")
        return version

    @staticmethod
    def _event(
        session: Session, adapter: Adapter, kind: str, message: str, detail: dict[str, Any] | None = None
    ) -> None:
        session.add(Event(adapter_id=adapter.id, kind=kind, message=message, detail=detail or {}))
