"""Engine creation and schema migrations for the registry database.

Any SQLAlchemy URL works (SQLite under TUNELOOP_HOME by default, Postgres in production); the
schema is always brought to Alembic's head before use, so a fresh file and an old one behave alike.
A new SQLite file is created readable by its owner only (it holds key hashes, job specs and event
details), and error messages never show a URL's password or a statement's parameters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url` (default: TUNELOOP_DB_URL), creating the SQLite folder if needed."""
    url = url or settings.TUNELOOP_DB_URL.get()
    shown = settings.redact_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"registry URL {shown!r} is not a SQLAlchemy URL (e.g. sqlite:///path.db)"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        private_sqlite_file(parsed.database)
    try:
        # hide_parameters: a failed statement's error shows no values (specs, events, key hashes).
        engine = create_engine(parsed, hide_parameters=True, connect_args=connect_args(parsed))
    except Exception as exc:  # a missing driver, an unknown dialect
        raise ConfigError(f"cannot open registry {shown!r}: {settings.redact_url(str(exc))}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def connect_args(url: URL) -> dict[str, Any]:
    """Driver arguments every connection gets: PostgreSQL's connect_timeout, so a database that
    accepts connections but never answers fails the operation instead of hanging it (libpq waits for
    ever by default). SQLite needs none (its busy_timeout is a pragma)."""
    if url.get_backend_name() == "postgresql":
        return {"connect_timeout": settings.TUNELOOP_DB_CONNECT_TIMEOUT_S.get()}
    return {}


def private_sqlite_file(database: str) -> Path:
    """Create the SQLite file `database` (and its folder) readable and writable by its owner only,
    before SQLite creates it with the umask's mode; an existing file is left as it is. SQLite gives
    the -wal and -shm files it makes beside it the same mode."""
    path = Path(database).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    os.close(fd)
    return path


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    # Foreign keys are off by default in SQLite; WAL lets the gateway read while a job publishes.
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic, inside one transaction."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
