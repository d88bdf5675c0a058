"""Alembic environment: migrations run on the connection tuneloop hands over (registry/db.py)."""

from alembic import context

from tuneloop.platform.registry.tables import Base

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table instead.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
