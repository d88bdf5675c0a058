"""files and fine-tuning jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 23:40:00

Two new tables for the gateway's OpenAI fine-tuning API: `files` (uploads, their owner key and where
their bytes are stored) and `fine_tuning_jobs` (the OpenAI-side job: owner key, request, the registry
job that runs it). Nothing existing changes, so the downgrade only drops them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("filename", sa.String(length=256), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("uri", sa.String(length=1024), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_files_key_id", "files", ["key_id"])
    op.create_table(
        "fine_tuning_jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("adapter_name", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("result_file", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("adapter_name"),
    )
    op.create_index("ix_fine_tuning_jobs_key_id", "fine_tuning_jobs", ["key_id"])
    op.create_index("ix_fine_tuning_jobs_created_at", "fine_tuning_jobs", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_fine_tuning_jobs_created_at", "fine_tuning_jobs")
    op.drop_index("ix_fine_tuning_jobs_key_id", "fine_tuning_jobs")
    op.drop_table("fine_tuning_jobs")
    op.drop_index("ix_files_key_id", "files")
    op.drop_table("files")
