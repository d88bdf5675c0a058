"""an index on events (adapter, kind)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 03:20:00

Every monitoring round reads the history of each alias's adapter (its open retrains, its drift
evidence); without an index each read scanned the events of every adapter. Nothing else changes.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_adapter_kind", "events", ["adapter_id", "kind"])


def downgrade() -> None:
    op.drop_index("ix_events_adapter_kind", table_name="events")
