"""Runtime heartbeats: which runtime held the state directory, its last heartbeat, how it stopped.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runtime_heartbeats",
        sa.Column("runtime_id", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("state_dir", sa.Text(), nullable=False),
        sa.Column("started_at", sa.Text(), nullable=False),
        sa.Column("beat_at", sa.Text(), nullable=False),
        sa.Column("stopped_at", sa.Text(), nullable=True),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("db_write_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("runtime_id", name="pk_runtime_heartbeats"),
    )
    op.create_index("ix_runtime_heartbeats_beat_at", "runtime_heartbeats", ["beat_at"])


def downgrade() -> None:
    op.drop_table("runtime_heartbeats")
