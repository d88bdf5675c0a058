"""One way to open a SQL database: the registry and the capture store both come through `open_engine`.

Any SQLAlchemy URL works (SQLite by default, PostgreSQL in production). A new SQLite file is created
readable by its owner only (it holds key hashes, specs, prompts and answers) and every connection
gets WAL, foreign keys and a busy timeout; an in-memory SQLite database is one connection shared by
every thread. Error messages never show a URL's password or a statement's parameters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError


def open_engine(url: str, what: str) -> Engine:
    """An engine for `url`; `what` names the database in errors ("registry", "capture store")."""
    shown = settings.redact_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"{what} URL {shown!r} is not a SQLAlchemy URL (e.g. sqlite:///path.db)") from None
    options: dict[str, Any] = {"hide_parameters": True}  # a failed statement's error shows no values
    sqlite = parsed.get_backend_name() == "sqlite"
    if not sqlite:
        options.update(pool_pre_ping=True, connect_args=connect_args(parsed))
    elif parsed.database in (None, "", ":memory:"):
        # One shared connection, or every thread would see its own empty database.
        options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        private_sqlite_file(parsed.database)
    try:
        engine = create_engine(parsed, **options)
    except Exception as exc:  # a missing driver, an unknown dialect
        raise ConfigError(f"cannot open {what} {shown!r}: {settings.redact_url(str(exc))}") from None
    if sqlite:
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
    # Foreign keys are off by default in SQLite; WAL lets readers (the gateway, the drift loop) read
    # while a writer (a job publishing, the capture writer) writes.
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
