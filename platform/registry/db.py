"""The registry database: its engine (platform/sql.py, as every database of tuneloop) and migrations.

Any SQLAlchemy URL works (SQLite under TUNELOOP_HOME by default, Postgres in production); the
schema is always brought to Alembic's head before use, so a fresh file and an old one behave alike.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from tuneloop.platform import settings
from tuneloop.platform.sql import open_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url` (default: TUNELOOP_DB_URL); see platform/sql.py."""
    return open_engine(url or settings.TUNELOOP_DB_URL.get(), "registry")


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
