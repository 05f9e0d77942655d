"""Run leases: which runtime drives each run, renewed by a heartbeat, so that several runtimes
(on several machines) can share one ledger without two ever driving the same run.

Revision ID: 0004
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_leases",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=True),
        sa.Column("owner_host", sa.Text(), nullable=True),
        sa.Column("owner_pid", sa.Integer(), nullable=True),
        sa.Column("owner_home", sa.Text(), nullable=True),
        sa.Column("acquired_at", sa.Text(), nullable=True),
        sa.Column("heartbeat_at", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.Text(), nullable=True),
        sa.Column("released_at", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], name="fk_run_leases_run_id_runs"),
        sa.PrimaryKeyConstraint("run_id", name="pk_run_leases"),
    )
    op.create_index("ix_run_leases_owner_id", "run_leases", ["owner_id"])


def downgrade() -> None:
    op.drop_table("run_leases")
