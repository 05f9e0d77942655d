"""Read-only queries over the ledger, for the CLI, the monitor and the Store's callers.

Each call opens its own short session, so reads never share the writer's connection and see
only committed data. Rows come back as plain dicts keyed by column name; a ``*_json`` column
comes back decoded under the name without ``_json`` (text that is not JSON stays as is), and
``workstreams.depends_on`` as a list.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.orm import Session, defer

from domain.cache import CACHE_ADAPTER
from domain.shown import FAILING, allows_failure, shown_state
from persistence.leases import as_lease
from persistence.models import (
    AuditEntry,
    Base,
    ErrorRecord,
    Event,
    PatchRecord,
    RoutingDecision,
    Run,
    RunLease,
    RuntimeHeartbeat,
    SchemaMeta,
    StepAttempt,
    Task,
    Workstream,
)

_JSON_SUFFIX = "_json"


class StateReader:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get_run(self, run_id: str, metadata: bool = True) -> dict[str, Any] | None:
        """The run with ``metadata`` (the execution request and the plan snapshot); without it
        when ``metadata`` is False (a big plan's snapshot is costly to read and decode)."""
        with Session(self._engine) as session:
            if metadata:
                run = session.get(Run, run_id)
                return _as_dict(run) if run is not None else None
            run = session.scalars(select(Run).options(defer(Run.metadata_json)).where(Run.run_id == run_id)).first()
            return _as_dict(run, skip=("metadata_json",)) if run is not None else None

    def find_run_by_request_hash(self, request_hash: str) -> str | None:
        """The most recently created run of this request, if any."""
        with Session(self._engine) as session:
            return session.scalar(
                select(Run.run_id)
                .where(Run.request_hash == request_hash)
                .order_by(Run.created_at.desc(), Run.run_id.desc())
                .limit(1)
            )

    def list_runs(self) -> list[dict[str, Any]]:
        """Runs newest first — every runtime's — without metadata, each with ``task_counts`` by
        state, ``shown_counts`` by shown state (see :mod:`domain.shown`: allowed failures and
        reused results apart) and ``driven_by``: the runtime holding its lease now (see
        :meth:`get_leases`), or None."""
        with Session(self._engine) as session:
            counts: dict[str, Counter[str]] = {}
            shown: dict[str, Counter[str]] = {}
            for run_id, state, adapter, count in session.execute(
                select(Task.run_id, Task.state, Task.adapter, func.count()).group_by(Task.run_id, Task.state,
                                                                                     Task.adapter)
            ):
                counts.setdefault(run_id, Counter())[state] += count
                shown.setdefault(run_id, Counter())[shown_state(state, cached=adapter == CACHE_ADAPTER)] += count
            # Only failed tasks' specs are read: whether the plan let them fail.
            for run_id, state, spec in session.execute(
                select(Task.run_id, Task.state, Task.spec_json).where(Task.state.in_(sorted(FAILING)))
            ):
                if allows_failure(_decoded(spec)):
                    shown[run_id][state] -= 1
                    shown[run_id][shown_state(state, allowed=True)] += 1
            runs = session.scalars(select(Run).order_by(Run.created_at.desc(), Run.run_id.desc()))
            listed = [
                _as_dict(run, skip=("metadata_json",)) | {
                    "task_counts": dict(counts.get(run.run_id, {})),
                    "shown_counts": {k: n for k, n in shown.get(run.run_id, Counter()).items() if n}}
                for run in runs
            ]
        live = {lease["run_id"]: lease for lease in self.get_leases() if lease["live"]}
        for run in listed:
            run["driven_by"] = live.get(run["run_id"])
        return listed

    def get_leases(self) -> list[dict[str, Any]]:
        """Every run's lease by run id: ``owner_id``, ``owner_host``, ``owner_pid``,
        ``heartbeat_at``, ``expires_at`` and ``live`` (held now, by this machine's clock)."""
        now = datetime.now(UTC)
        leases = []
        for row in self._rows(select(RunLease).order_by(RunLease.run_id)):
            row["live"] = as_lease(row).is_live(now)
            leases.append(row)
        return leases

    def get_workstreams(self, run_id: str) -> list[dict[str, Any]]:
        return self._rows(select(Workstream).where(Workstream.run_id == run_id)
                          .order_by(Workstream.ws_id))

    def task_counts(self, run_id: str) -> dict[str, int]:
        """The run's tasks counted by state."""
        with Session(self._engine) as session:
            return dict(session.execute(
                select(Task.state, func.count()).where(Task.run_id == run_id).group_by(Task.state)
            ).all())

    def get_tasks(self, run_id: str, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Tasks by key (only those in ``states`` when given); ``attempts`` is the number of
        attempts started."""
        query = select(Task).where(Task.run_id == run_id)
        if states is not None:
            query = query.where(Task.state.in_(list(states)))
        return self._rows(query.order_by(Task.task_key))

    def get_attempts(self, run_id: str, task_key: str | None = None) -> list[dict[str, Any]]:
        """Step attempts in the order they started."""
        query = select(StepAttempt).where(StepAttempt.run_id == run_id)
        if task_key is not None:
            query = query.where(StepAttempt.step_name == task_key)
        return self._rows(query.order_by(StepAttempt.id))

    def completed_by_cache_key(self, cache_keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """For each of ``cache_keys`` that a COMPLETED attempt of any run recorded, the latest
        such attempt (its run, task, attempt, result and the hashes of its files_out)."""
        keys = list(dict.fromkeys(cache_keys))
        found: dict[str, dict[str, Any]] = {}
        columns = (StepAttempt.id, StepAttempt.cache_key, StepAttempt.run_id, StepAttempt.step_name,
                   StepAttempt.attempt, StepAttempt.result_json, StepAttempt.result_file,
                   StepAttempt.outputs_json, StepAttempt.cached_from)
        with Session(self._engine) as session:
            for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                rows = session.execute(select(*columns).where(
                    StepAttempt.cache_key.in_(keys[start:start + 500]),
                    StepAttempt.status == "COMPLETED").order_by(StepAttempt.id)).all()
                for row in rows:
                    found[row.cache_key] = dict(row._mapping)
        return found

    def cached_count(self, run_id: str) -> int:
        """How many of the run's attempts completed by reusing an earlier run's result."""
        with Session(self._engine) as session:
            return session.scalar(select(func.count()).select_from(StepAttempt).where(
                StepAttempt.run_id == run_id, StepAttempt.cached_from.is_not(None))) or 0

    def get_errors(self, run_id: str) -> list[dict[str, Any]]:
        return self._rows(select(ErrorRecord).where(ErrorRecord.run_id == run_id)
                          .order_by(ErrorRecord.id))

    def error_count(self, run_id: str, ws_id: str, step_name: str, signature: str) -> int:
        """How often this error was seen; 0 if never."""
        with Session(self._engine) as session:
            count = session.scalar(select(ErrorRecord.count).where(
                ErrorRecord.run_id == run_id, ErrorRecord.ws_id == ws_id,
                ErrorRecord.step_name == step_name, ErrorRecord.signature == signature,
            ))
            return count or 0

    def get_events(self, run_id: str, after_id: int = 0,
                   types: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Events of the run with ``id > after_id`` in id order; ``types`` filters event types.

        Ids only grow, so the last id seen is a cursor for the next call.
        """
        query = select(Event).where(Event.run_id == run_id, Event.id > after_id)
        if types is not None:
            query = query.where(Event.event_type.in_(list(types)))
        return self._rows(query.order_by(Event.id))

    def get_ledger_events(self, since: str, until: str, types: Iterable[str]) -> list[dict[str, Any]]:
        """Events of ``types`` concerning no run (circuits, actor restarts) recorded between
        ``since`` and ``until`` (ISO-8601 UTC, inclusive), in id order."""
        return self._rows(select(Event).where(Event.run_id.is_(None), Event.event_type.in_(list(types)),
                                              Event.timestamp >= since, Event.timestamp <= until)
                          .order_by(Event.id))

    def latest_run_id(self) -> str | None:
        """The most recently created run, if any."""
        with Session(self._engine) as session:
            return session.scalar(select(Run.run_id).order_by(Run.created_at.desc(), Run.run_id.desc()).limit(1))

    def runtime_heartbeats(self, limit: int = 5) -> list[dict[str, Any]]:
        """The runtimes that held this ledger's state directory, latest started first, each
        with its last heartbeat (``beat_at``) and how it stopped (``stopped_at`` None: never said)."""
        return self._rows(select(RuntimeHeartbeat).order_by(RuntimeHeartbeat.started_at.desc()).limit(limit))

    def runtime_of(self, at: str) -> dict[str, Any] | None:
        """The latest runtime started at or before ``at`` (the one that last worked on a run
        updated then)."""
        rows = self._rows(select(RuntimeHeartbeat).where(RuntimeHeartbeat.started_at <= at)
                          .order_by(RuntimeHeartbeat.started_at.desc()).limit(1))
        return rows[0] if rows else None

    def schema_version(self) -> str | None:
        with Session(self._engine) as session:
            version = session.get(SchemaMeta, "schema_version")
            return version.value if version is not None else None

    def get_audit(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Audit log rows, oldest first: of ``run_id``, or every row when None; ``accepted``
        is a bool and ``args`` the decoded arguments."""
        query = select(AuditEntry)
        if run_id is not None:
            query = query.where(AuditEntry.run_id == run_id)
        rows = self._rows(query.order_by(AuditEntry.id))
        for row in rows:
            row["accepted"] = bool(row["accepted"])
        return rows

    def get_patches(self, run_id: str) -> list[dict[str, Any]]:
        return self._rows(select(PatchRecord).where(PatchRecord.run_id == run_id).order_by(PatchRecord.id))

    def get_routing_decisions(self, run_id: str) -> list[dict[str, Any]]:
        """Routing decisions in the order they were recorded; ``candidates`` is a list."""
        return self._rows(select(RoutingDecision).where(RoutingDecision.run_id == run_id)
                          .order_by(RoutingDecision.id))

    def inspect_summary(self) -> dict[str, Any]:
        """What ``orchestrate db inspect`` shows: counts by state, schema version, masked URL."""
        with Session(self._engine) as session:
            version = session.get(SchemaMeta, "schema_version")
            return {
                "db_url": self._engine.url.render_as_string(hide_password=True),
                "server": self._server(session),
                "live_leases": [lease for lease in self.get_leases() if lease["live"]],
                "schema_version": version.value if version is not None else None,
                "runs": _counts(session, Run.status),
                "workstreams": _counts(session, Workstream.status),
                "tasks": _counts(session, Task.state),
                "events": session.scalar(select(func.count()).select_from(Event)) or 0,
                "circuits": self._circuits(session),
                "actor_restarts": self._restarts(session),
            }

    @staticmethod
    def _server(session: Session) -> dict[str, str]:
        """The database engine and its version, as the server reports it."""
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            version = session.execute(text("SHOW server_version")).scalar()
        elif dialect == "sqlite":
            version = session.execute(text("SELECT sqlite_version()")).scalar()
        else:
            version = ".".join(str(part) for part in session.get_bind().dialect.server_version_info or ())
        return {"dialect": dialect, "version": str(version or "")}

    @staticmethod
    def _restarts(session: Session) -> dict[str, int]:
        """How many times each actor was restarted, over the ledger's whole history."""
        counts: dict[str, int] = {}
        for payload in session.scalars(select(Event.payload_json).where(Event.event_type == "ACTOR_RESTARTED")):
            data = _decoded(payload) or {}
            if isinstance(data, dict) and "actor" in data:
                counts[data["actor"]] = counts.get(data["actor"], 0) + 1
        return counts

    @staticmethod
    def _circuits(session: Session) -> dict[str, str]:
        """Each adapter's circuit state as of its latest recorded change."""
        states: dict[str, str] = {}
        for payload in session.scalars(
            select(Event.payload_json).where(Event.event_type.like("CIRCUIT_%")).order_by(Event.id)
        ):
            data = _decoded(payload) or {}
            if isinstance(data, dict) and "adapter" in data:
                states[data["adapter"]] = data.get("state", "")
        return states

    def _rows(self, query: Any) -> list[dict[str, Any]]:
        """The rows of an entity query as plain dicts. Read as Core rows, not ORM objects: a
        run of thousands of tasks is listed several times per command."""
        entity = query.column_descriptions[0]["entity"]
        columns = query.with_only_columns(*entity.__table__.columns)
        with self._engine.connect() as connection:
            return [_plain(row) for row in connection.execute(columns).mappings()]


def _counts(session: Session, column: Any) -> dict[str, int]:
    return {value: count for value, count in session.execute(
        select(column, func.count()).group_by(column).order_by(column)
    )}


def _plain(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name.endswith(_JSON_SUFFIX):
            out[name[: -len(_JSON_SUFFIX)]] = _decoded(value)
        elif name == "depends_on":
            out[name] = json.loads(value)
        else:
            out[name] = value
    return out


def _as_dict(row: Base, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute in inspect(row).mapper.column_attrs:
        name = attribute.key
        if name in skip:
            continue
        value = getattr(row, name)
        if name.endswith(_JSON_SUFFIX):
            out[name[: -len(_JSON_SUFFIX)]] = _decoded(value)
        elif name == "depends_on":
            out[name] = json.loads(value)
        else:
            out[name] = value
    return out


def _decoded(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
