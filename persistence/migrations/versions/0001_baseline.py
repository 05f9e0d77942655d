"""Baseline: runs, workstreams, tasks, step attempts, errors, events, routing, schema meta.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_AUTOINCREMENT = {"sqlite_autoincrement": True}


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=True),
        sa.Column("plan_source", sa.Text(), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("metadata_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name="pk_runs"),
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_request_hash", "runs", ["request_hash"])

    op.create_table(
        "workstreams",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("ws_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("depends_on", sa.Text(), server_default="[]", nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Text(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], name="fk_workstreams_run_id_runs"),
        sa.PrimaryKeyConstraint("run_id", "ws_id", name="pk_workstreams"),
    )
    op.create_index("ix_workstreams_run_id_status", "workstreams", ["run_id", "status"])

    op.create_table(
        "tasks",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("task_key", sa.Text(), nullable=False),
        sa.Column("ws_id", sa.Text(), nullable=False),
        sa.Column("tool", sa.Text(), nullable=True),
        sa.Column("adapter", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error_class", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Text(), nullable=False),
        sa.Column("started_at", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.Text(), nullable=True),
        sa.Column("spec_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], name="fk_tasks_run_id_runs"),
        sa.ForeignKeyConstraint(
            ["run_id", "ws_id"],
            ["workstreams.run_id", "workstreams.ws_id"],
            name="fk_tasks_run_id_ws_id_workstreams",
        ),
        sa.PrimaryKeyConstraint("run_id", "task_key", name="pk_tasks"),
    )
    op.create_index("ix_tasks_run_id_state", "tasks", ["run_id", "state"])

    op.create_table(
        "step_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("ws_id", sa.Text(), nullable=False),
        sa.Column("step_name", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("adapter", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_create_time", sa.Float(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Text(), nullable=False),
        sa.Column("completed_at", sa.Text(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("max_rss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("cpu_s", sa.Float(), nullable=True),
        sa.Column("error_class", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("gate_output", sa.Text(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], name="fk_step_attempts_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_step_attempts"),
        sa.UniqueConstraint(
            "run_id", "step_name", "attempt", name="uq_step_attempts_run_id_step_name_attempt"
        ),
        **_AUTOINCREMENT,
    )
    op.create_index(
        "ix_step_attempts_run_id_ws_id_step_name", "step_attempts", ["run_id", "ws_id", "step_name"]
    )

    op.create_table(
        "errors",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("ws_id", sa.Text(), nullable=False),
        sa.Column("step_name", sa.Text(), nullable=False),
        sa.Column("error_code", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("context_json", sa.Text(), nullable=True),
        sa.Column("count", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("first_seen_at", sa.Text(), nullable=False),
        sa.Column("last_seen_at", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], name="fk_errors_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_errors"),
        sa.UniqueConstraint(
            "run_id", "ws_id", "step_name", "signature",
            name="uq_errors_run_id_ws_id_step_name_signature",
        ),
        **_AUTOINCREMENT,
    )
    op.create_index("ix_errors_run_id_ws_id_signature", "errors", ["run_id", "ws_id", "signature"])

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("timestamp", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("ws_id", sa.Text(), nullable=True),
        sa.Column("task_key", sa.Text(), nullable=True),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        **_AUTOINCREMENT,
    )
    op.create_index(
        "ix_events_run_id_ws_id_event_type", "events", ["run_id", "ws_id", "event_type"]
    )
    op.create_index("ix_events_run_id_id", "events", ["run_id", "id"])

    op.create_table(
        "routing_decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("task_key", sa.Text(), nullable=False),
        sa.Column("candidates_json", sa.Text(), nullable=False),
        sa.Column("chosen", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name="fk_routing_decisions_run_id_runs"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_routing_decisions"),
        **_AUTOINCREMENT,
    )
    op.create_index(
        "ix_routing_decisions_run_id_task_key", "routing_decisions", ["run_id", "task_key"]
    )

    op.create_table(
        "schema_meta",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_schema_meta"),
    )


def downgrade() -> None:
    for table in (
        "schema_meta",
        "routing_decisions",
        "events",
        "errors",
        "step_attempts",
        "tasks",
        "workstreams",
        "runs",
    ):
        op.drop_table(table)
