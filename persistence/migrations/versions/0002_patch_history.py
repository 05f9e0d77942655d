"""Patch history: the files each task changed in its worktree, and where its patch is kept.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patch_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("ws_id", sa.Text(), nullable=False),
        sa.Column("task_key", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("base_commit", sa.Text(), nullable=False),
        sa.Column("head_commit", sa.Text(), nullable=True),
        sa.Column("files_json", sa.Text(), nullable=False),
        sa.Column("patch_sha256", sa.Text(), nullable=False),
        sa.Column("patch_path", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], name="fk_patch_history_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_patch_history"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_patch_history_run_id_task_key", "patch_history", ["run_id", "task_key"])


def downgrade() -> None:
    op.drop_table("patch_history")
