"""Results and incremental runs: a large result's file, the hashes of a task's files_out, its
cache key (indexed with the status, for lookups across runs) and where a cached attempt's
result came from.

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = ("result_file", "outputs_json", "cache_key", "cached_from")


def upgrade() -> None:
    with op.batch_alter_table("step_attempts") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.Text(), nullable=True))
    op.create_index("ix_step_attempts_cache_key_status", "step_attempts", ["cache_key", "status"])


def downgrade() -> None:
    op.drop_index("ix_step_attempts_cache_key_status", table_name="step_attempts")
    with op.batch_alter_table("step_attempts") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
