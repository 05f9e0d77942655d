"""Everything the ledger holds about one run, read at once for a report or a dashboard page.

Read-only, through :class:`persistence.reader.StateReader` and short sessions of its own: rows
come back as plain dicts in the reader's shape. The audit trail is read from an ``audit_log``
table when the database has one (:func:`read_audit`), so a ledger without it still reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, MetaData, Table, inspect, or_, select

from persistence.models import Event
from persistence.reader import StateReader, _plain

AUDIT_TABLE = "audit_log"
# Events a report lists besides the attempts: breakers, quarantine, merges, decisions, steering.
NOTABLE_EVENTS = (
    "RUN_CREATED", "EXECUTION_FINISHED", "RUN_QUARANTINED", "RUN_PAUSED", "RUN_RESUMED",
    "WORKSTREAM_MERGED", "MERGE_CONFLICT", "MERGE_FAILED", "BRANCH_LEFT", "FIX_ROUND",
    "TASK_APPROVED", "TASK_REJECTED", "WORKTREE_RESET", "ACTOR_RESTARTED", "ACTOR_HUNG",
    "ILLEGAL_TRANSITION",
)
BREAKER_PREFIX = "CIRCUIT_"


@dataclass(frozen=True, slots=True)
class RunLedger:
    """One run as the ledger recorded it. ``audit`` is ``None`` when the ledger has no audit
    table (older schema), else its rows for the run, oldest first."""

    run: dict[str, Any]
    workstreams: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    events: list[dict[str, Any]]
    breaker_events: list[dict[str, Any]]
    routing: list[dict[str, Any]]
    patches: list[dict[str, Any]]
    audit: list[dict[str, Any]] | None


def read_run_ledger(engine: Engine, run_id: str) -> RunLedger | None:
    """The whole record of ``run_id``; ``None`` if the ledger has no such run."""
    reader = StateReader(engine)
    run = reader.get_run(run_id)
    if run is None:
        return None
    return RunLedger(
        run=run,
        workstreams=reader.get_workstreams(run_id),
        tasks=reader.get_tasks(run_id),
        attempts=reader.get_attempts(run_id),
        errors=reader.get_errors(run_id),
        events=reader.get_events(run_id, types=NOTABLE_EVENTS),
        breaker_events=read_breaker_events(engine, run),
        routing=reader.get_routing_decisions(run_id),
        patches=reader.get_patches(run_id),
        audit=read_audit(engine, run_id),
    )


def read_breaker_events(engine: Engine, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Circuit changes that concern ``run``: those recorded for it, and the runtime-wide ones
    (a half-open timer belongs to no run) recorded while it was running."""
    query = (
        select(*Event.__table__.columns)
        .where(Event.event_type.like(BREAKER_PREFIX + "%"))
        .where(or_(
            Event.run_id == run["run_id"],
            Event.run_id.is_(None) & (Event.timestamp >= run["created_at"]) & (Event.timestamp <= run["updated_at"]),
        ))
        .order_by(Event.id)
    )
    with engine.connect() as connection:
        return [_plain(row) for row in connection.execute(query).mappings()]


def read_audit(engine: Engine, run_id: str | None = None) -> list[dict[str, Any]] | None:
    """The ``audit_log`` rows (for ``run_id`` when the table has a ``run_id`` column and one is
    given), oldest first, or ``None`` when the database has no such table.

    The table is reflected rather than modelled here, so every column it has is shown as it is
    (``*_json`` columns decoded, like the reader's)."""
    if not inspect(engine).has_table(AUDIT_TABLE):
        return None
    table = Table(AUDIT_TABLE, MetaData(), autoload_with=engine)
    query = select(table)
    if run_id is not None and "run_id" in table.c:
        query = query.where(table.c.run_id == run_id)
    order = [table.c[name] for name in ("id", "at", "timestamp", "recorded_at") if name in table.c][:1]
    query = query.order_by(*order) if order else query
    with engine.connect() as connection:
        return [_plain(row) for row in connection.execute(query).mappings()]
