"""Agent costs: tokens in and out and the cost of each agent attempt, as its tool reported them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_attempts") as batch:
        batch.add_column(sa.Column("tokens_in", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tokens_out", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cost_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("step_attempts") as batch:
        batch.drop_column("cost_usd")
        batch.drop_column("tokens_out")
        batch.drop_column("tokens_in")
