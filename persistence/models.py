"""The tables of the ledger, as SQLAlchemy 2.0 typed declarative models.

Timestamps are ISO-8601 UTC text (:mod:`persistence.clock`), so they read the same in SQLite and
PostgreSQL and sort as text. ``*_json`` columns hold JSON text. The migration in
``migrations/versions`` creates exactly these tables; a test compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    MetaData,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints keep migrations deterministic and let later ALTERs name what they drop.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {str: Text}


class Run(Base):
    """One execution of a plan; ``metadata_json`` holds the request and the plan snapshot."""

    __tablename__ = "runs"
    __table_args__ = (Index(None, "status"),)

    run_id: Mapped[str] = mapped_column(primary_key=True)
    status: Mapped[str]
    created_at: Mapped[str]
    updated_at: Mapped[str]
    # Not unique: the same request may be run again on purpose (e.g. after it was abandoned).
    request_hash: Mapped[str | None] = mapped_column(index=True)
    plan_source: Mapped[str | None]
    status_reason: Mapped[str | None]
    metadata_json: Mapped[str | None]


class Workstream(Base):
    __tablename__ = "workstreams"
    __table_args__ = (Index(None, "run_id", "status"),)

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    ws_id: Mapped[str] = mapped_column(primary_key=True)
    status: Mapped[str]
    depends_on: Mapped[str] = mapped_column(server_default="[]")
    title: Mapped[str | None]
    created_at: Mapped[str]
    updated_at: Mapped[str]
    metadata_json: Mapped[str | None]


class Task(Base):
    """A task of a run; ``task_key`` is ``<ws_id>/<task id>``, ``attempts`` counts starts."""

    __tablename__ = "tasks"
    __table_args__ = (
        ForeignKeyConstraint(["run_id", "ws_id"], ["workstreams.run_id", "workstreams.ws_id"]),
        Index(None, "run_id", "state"),
    )

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    task_key: Mapped[str] = mapped_column(primary_key=True)
    ws_id: Mapped[str]
    tool: Mapped[str | None]
    adapter: Mapped[str | None]
    state: Mapped[str]
    priority: Mapped[int] = mapped_column(server_default=text("0"))
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    exit_code: Mapped[int | None]
    error_class: Mapped[str | None]
    created_at: Mapped[str]
    updated_at: Mapped[str]
    started_at: Mapped[str | None]
    finished_at: Mapped[str | None]
    spec_json: Mapped[str | None]


class StepAttempt(Base):
    """One try of a task by a tool; ``(pid, pid_create_time)`` identifies its process."""

    __tablename__ = "step_attempts"
    __table_args__ = (
        UniqueConstraint("run_id", "step_name", "attempt"),
        Index(None, "run_id", "ws_id", "step_name"),
        # Incremental runs look a task's cache key up among completed attempts of every run.
        Index(None, "cache_key", "status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"))
    ws_id: Mapped[str]
    step_name: Mapped[str]
    attempt: Mapped[int]
    status: Mapped[str]
    adapter: Mapped[str | None]
    pid: Mapped[int | None]
    pid_create_time: Mapped[float | None]
    log_path: Mapped[str | None]
    started_at: Mapped[str]
    completed_at: Mapped[str | None]
    exit_code: Mapped[int | None]
    duration_s: Mapped[float | None]
    max_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cpu_s: Mapped[float | None]
    error_class: Mapped[str | None]
    message: Mapped[str | None]
    gate_output: Mapped[str | None]
    result_json: Mapped[str | None]
    # A result too large to keep inline: the file holding its JSON.
    result_file: Mapped[str | None]
    # {path: sha256} of the task's files_out when it completed.
    outputs_json: Mapped[str | None]
    cache_key: Mapped[str | None]
    # run/task/attempt whose result this (cached) attempt reused.
    cached_from: Mapped[str | None]
    # Agent attempts: tokens and cost as the tool reported them (None: it did not say).
    tokens_in: Mapped[int | None]
    tokens_out: Mapped[int | None]
    cost_usd: Mapped[float | None]


class ErrorRecord(Base):
    """A distinct error of a step; repeats of the same ``signature`` raise ``count``."""

    __tablename__ = "errors"
    __table_args__ = (
        UniqueConstraint("run_id", "ws_id", "step_name", "signature"),
        Index(None, "run_id", "ws_id", "signature"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"))
    ws_id: Mapped[str]
    step_name: Mapped[str]
    error_code: Mapped[str]
    signature: Mapped[str]
    message: Mapped[str]
    context_json: Mapped[str | None]
    count: Mapped[int] = mapped_column(server_default=text("1"))
    first_seen_at: Mapped[str]
    last_seen_at: Mapped[str]


class Event(Base):
    """The audit trail. Ids only grow (AUTOINCREMENT), so ``id > n`` is a resumable cursor.

    No foreign key: an event may describe something refused, e.g. an op naming no known run.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index(None, "run_id", "ws_id", "event_type"),
        Index(None, "run_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    timestamp: Mapped[str]
    run_id: Mapped[str | None]
    ws_id: Mapped[str | None]
    task_key: Mapped[str | None]
    event_type: Mapped[str]
    payload_json: Mapped[str | None]


class RoutingDecision(Base):
    __tablename__ = "routing_decisions"
    __table_args__ = (
        Index(None, "run_id", "task_key"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"))
    task_key: Mapped[str]
    candidates_json: Mapped[str]
    chosen: Mapped[str]
    reason: Mapped[str | None]
    decided_at: Mapped[str]


class PatchRecord(Base):
    """What one task attempt changed in its workstream's worktree (the patch: ``patch_path``)."""

    __tablename__ = "patch_history"
    __table_args__ = (
        Index(None, "run_id", "task_key"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"))
    ws_id: Mapped[str]
    task_key: Mapped[str]
    attempt: Mapped[int]
    base_commit: Mapped[str]
    head_commit: Mapped[str | None]
    files_json: Mapped[str]
    patch_sha256: Mapped[str]
    patch_path: Mapped[str | None]
    recorded_at: Mapped[str]


class RuntimeHeartbeat(Base):
    """One runtime that held the state directory: who (pid, host), since when, its last
    heartbeat, and when and how it stopped (``stopped_at`` None: it never said — killed, or
    still running). ``orchestrate health`` reads it when no runtime answers."""

    __tablename__ = "runtime_heartbeats"
    __table_args__ = (Index(None, "beat_at"),)

    runtime_id: Mapped[str] = mapped_column(primary_key=True)
    pid: Mapped[int]
    hostname: Mapped[str]
    state_dir: Mapped[str]
    started_at: Mapped[str]
    beat_at: Mapped[str]
    stopped_at: Mapped[str | None]
    stop_reason: Mapped[str | None]
    # The runtime's ledger commit times so far: a histogram (domain.metrics.Histogram.as_json).
    db_write_json: Mapped[str | None]


class SchemaMeta(Base):
    """Facts about the schema itself, e.g. ``('schema_version', '1')``."""

    __tablename__ = "schema_meta"

    key: Mapped[str] = mapped_column(primary_key=True)
    value: Mapped[str]


class RunLease(Base):
    """Who drives a run (see :mod:`domain.leases`): the owning runtime, its last heartbeat and
    when its lease expires. One row per run that was ever driven; a run is free when its lease
    has no owner, was released, or has expired."""

    __tablename__ = "run_leases"
    __table_args__ = (Index(None, "owner_id"),)

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    owner_id: Mapped[str | None]
    owner_host: Mapped[str | None]
    owner_pid: Mapped[int | None]
    # The owner's state directory (its id, see domain.leases.LeaseOwner.home).
    owner_home: Mapped[str | None]
    acquired_at: Mapped[str | None]
    heartbeat_at: Mapped[str | None]
    expires_at: Mapped[str | None]
    # Set when the owner ended the lease itself (its run finished, it stopped); cleared when
    # the lease is taken again. An owner that stopped renewing without it died.
    released_at: Mapped[str | None]


class AuditEntry(Base):
    """Who asked for a state-changing command, when, with what arguments, and what came of it.

    ``via``: ``socket`` (a control-socket client: ``uid`` from its peer credentials), ``cli``
    (a command the CLI applied itself: the process's own uid) or ``web``. ``run_id`` is the run
    the command concerned, when it named or made one. ``accepted`` is 1 or 0; ``message`` the
    refusal's sentence (or a short account of what was done). Refused connections count too.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        Index(None, "run_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[str]
    uid: Mapped[int]
    user: Mapped[str]
    via: Mapped[str]
    command: Mapped[str]
    args_json: Mapped[str]
    run_id: Mapped[str | None]
    accepted: Mapped[int]
    message: Mapped[str]
