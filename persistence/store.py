"""The ledger's store: the only code that writes the database.

:meth:`Store.apply` applies a burst of :mod:`messages.ledger` ops in one transaction (group
commit). Every state change is checked against :mod:`domain.states` using an in-memory cache of
current states, so the hot path issues no SELECT once a run is warm, and rows are written with
one ``executemany`` per statement (:mod:`persistence.writes`). The seed-style single-op methods
are thin wrappers around :meth:`Store.apply`.

A Store owns one long-lived connection; its writes are serialised by a lock, so it may be
shared between threads, but only one Store (one process) should write a database at a time.

Waiting for the database is the caller's business, in short steps: a SQLite write
transaction starts with ``BEGIN IMMEDIATE`` (the write lock is taken up front, so a
transaction never fails half-way on a lock upgrade) and waits at most ``WRITE_WAIT_MS`` for
it. A write refused for a cause that may pass (locked by another process, disk full,
read-only, I/O error) raises :class:`WriteStalled` with nothing written; the Ledger keeps the
ops and tries again.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import structlog
from sqlalchemy import Connection, Engine, bindparam, event, insert, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from domain.leases import Lease, LeaseOwner, expiry
from domain.plan import Plan, canonical_json, sha256_of
from domain.states import (
    EntityKind,
    IllegalTransition,
    TaskState,
    check_transition,
    initial_state,
)
from messages.ledger import (
    AttemptFinished,
    AttemptStarted,
    AuditRecorded,
    ErrorObserved,
    EventObserved,
    LedgerOp,
    PatchRecorded,
    RoutingDecided,
    RuntimeBeat,
    TransitionRun,
    TransitionTask,
    TransitionWorkstream,
)
from persistence import leases
from persistence.clock import utc_now_iso
from persistence.errors import DuplicateAttempt, DuplicateRun, LeaseLost, UnknownEntity
from persistence.models import Event, Run, Task, Workstream
from persistence.reader import StateReader
from persistence.state_cache import RunStates, StateCache, StateKey, load_run_states
from persistence.writes import Transition, WriteBatch

log = structlog.get_logger("orchestrate.store")

RUN_ID_PREFIX = "run-"
# Longest a write waits inside SQLite for another process's lock: short, so the Ledger stays
# responsive and decides itself how long to keep trying.
WRITE_WAIT_MS = 200
_WRITER = "orchestrate_writer"

SERVER_UNREACHABLE = "database server unreachable"
# Primary SQLite result codes (``code & 0xFF``) that may pass, in words for a person.
_STALL_CAUSES = {
    5: "locked by another process",  # SQLITE_BUSY
    6: "locked by another process",  # SQLITE_LOCKED
    8: "read-only",  # SQLITE_READONLY
    10: "disk I/O error",  # SQLITE_IOERR
    13: "disk full",  # SQLITE_FULL
    14: "cannot be opened for writing",  # SQLITE_CANTOPEN (e.g. no room for the -wal file)
}


# Task rows inserted per statement when a run is created.
ROWS_PER_INSERT = 5000


class WriteStalled(RuntimeError):
    """The database refused a write for a cause that may pass; nothing of it was written.

    ``cause`` is one of the words of ``_STALL_CAUSES`` ("locked by another process",
    "disk full", "read-only", ...); ``database`` names the file (or the masked URL).
    """

    def __init__(self, cause: str, database: str, detail: str) -> None:
        super().__init__(f"{database}: {cause} ({detail})")
        self.cause = cause
        self.database = database
        self.detail = detail


# PostgreSQL SQLSTATEs that may pass: by class (first two characters) or exact code.
_PG_STALL_CAUSES = {
    "08": SERVER_UNREACHABLE,  # connection exception
    "57P01": SERVER_UNREACHABLE,  # admin_shutdown
    "57P02": SERVER_UNREACHABLE,  # crash_shutdown
    "57P03": SERVER_UNREACHABLE,  # cannot_connect_now (starting up, recovering)
    "40001": "locked by another process",  # serialization_failure
    "40P01": "locked by another process",  # deadlock_detected
    "55P03": "locked by another process",  # lock_not_available
    "53100": "disk full",
    "53200": "out of memory",
    "53300": "too many connections",
    "25006": "read-only",  # read_only_sql_transaction (a standby, default_transaction_read_only)
    "58030": "disk I/O error",
}


def stall_cause(error: BaseException) -> str | None:
    """The cause of a write failure that may pass, or None if retrying cannot help."""
    original = getattr(error, "orig", None)
    code = getattr(original, "sqlite_errorcode", None)
    if code is not None:
        return _STALL_CAUSES.get(code & 0xFF)
    sqlstate = getattr(original, "sqlstate", None) or ""
    cause = _PG_STALL_CAUSES.get(sqlstate) or _PG_STALL_CAUSES.get(sqlstate[:2])
    if cause is None and not sqlstate and (
            getattr(error, "connection_invalidated", False) or isinstance(error, OperationalError)):
        # The server went away mid-statement, or refuses new connections: no SQLSTATE, and a
        # connection to make anew (SQLAlchemy does that on the next begin).
        return SERVER_UNREACHABLE
    return cause


def _begin_immediate(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any,
                     executemany: bool) -> tuple[str, Any]:
    # persistence.db begins every SQLite transaction with a deferred BEGIN; on the writer's
    # connection that becomes BEGIN IMMEDIATE.
    if statement == "BEGIN" and conn.get_execution_options().get(_WRITER):
        return "BEGIN IMMEDIATE", parameters
    return statement, parameters


@dataclass(frozen=True, slots=True)
class Rejected:
    """An op :meth:`Store.apply` skipped; ``error`` is what the single-op API raises for it."""

    op: LedgerOp
    reason: str
    error: Exception


def new_run_id() -> str:
    return RUN_ID_PREFIX + uuid.uuid4().hex[:12]


class Store:
    """Writes runs, states, attempts, errors, events and routing decisions; reads them back.

    ``transitions_log``, if given, receives one JSON line per accepted transition after its
    transaction commits (``{"at","run_id","entity","key","from","to","reason"}``).

    ``lease_owner``, when set (a runtime's Store), fences every batch: ops of a run another
    runtime has taken over are refused (:class:`persistence.errors.LeaseLost`), in the same
    transaction that writes the rest.
    """

    def __init__(self, engine: Engine, transitions_log: Path | None = None,
                 lease_owner: LeaseOwner | None = None) -> None:
        self.engine = engine
        self.lease_owner = lease_owner
        self._reader = StateReader(engine)
        self._cache = StateCache()
        self._lock = threading.Lock()
        self.database = engine.url.database if engine.url.get_backend_name() == "sqlite" else \
            engine.url.render_as_string(hide_password=True)
        self._connection = self._writer_connection(engine)
        self._log: BinaryIO | None = None
        self._log_failed = False
        if transitions_log is not None:
            transitions_log.parent.mkdir(parents=True, exist_ok=True)
            self._log = transitions_log.open("ab", buffering=0)
        self._handlers: dict[type, Callable[[Any, WriteBatch], Rejected | None]] = {
            TransitionRun: self._transition_run,
            TransitionWorkstream: self._transition_workstream,
            TransitionTask: self._transition_task,
            AttemptStarted: self._attempt_started,
            AttemptFinished: self._attempt_finished,
            ErrorObserved: self._error_observed,
            EventObserved: self._event_observed,
            RoutingDecided: self._routing_decided,
            PatchRecorded: self._patch_recorded,
            RuntimeBeat: self._runtime_beat,
            AuditRecorded: self._audit_recorded,
        }

    @staticmethod
    def _writer_connection(engine: Engine) -> Connection:
        connection = engine.connect()
        if engine.url.get_backend_name() != "sqlite":
            return connection
        if not event.contains(engine, "before_cursor_execute", _begin_immediate):
            event.listen(engine, "before_cursor_execute", _begin_immediate, retval=True)
        connection.connection.dbapi_connection.execute(f"PRAGMA busy_timeout={WRITE_WAIT_MS}")
        return connection.execution_options(**{_WRITER: True})

    # -- runs -------------------------------------------------------------------------------

    def create_run(
        self,
        request_json: dict[str, Any],
        plan: Plan | dict[str, Any],
        *,
        run_id: str | None = None,
        at: str,
    ) -> str:
        """Create a run with all its workstreams and tasks, all pending, in one transaction.

        ``plan`` is the :class:`Plan` (or its ``to_json()`` form). Also writes events
        ``RUN_CREATED`` and ``EXECUTION_REQUEST_VALIDATED``. The request hash is
        ``request_json["request_hash"]`` if present, else the SHA-256 of the request's canonical
        JSON. Raises :class:`DuplicateRun` if ``run_id`` exists, and :class:`WriteStalled` when
        the database refuses for a cause that may pass; if anything fails, nothing is written.
        """
        if isinstance(plan, dict):
            plan = Plan.from_json(plan)
        run_id = run_id or new_run_id()
        request_hash = request_json.get("request_hash") or sha256_of(request_json)
        run_row = {
            "run_id": run_id,
            "status": initial_state("run"),
            "created_at": at,
            "updated_at": at,
            "request_hash": request_hash,
            "plan_source": plan.source or None,
            "status_reason": None,
            # Built from texts: a huge plan is serialised one task at a time (see Plan.json_text).
            "metadata_json": f'{{"request": {json.dumps(request_json)}, "plan": {plan.json_text()}}}',
        }
        workstreams = _workstream_rows(run_id, plan, at)
        created = {
            "request_hash": request_hash,
            "plan_source": run_row["plan_source"],
            "workstreams": len(workstreams),
            "tasks": sum(len(ws.tasks) for ws in plan.workstreams),
        }
        events = [
            _event_row(at, run_id, "RUN_CREATED", created),
            _event_row(at, run_id, "EXECUTION_REQUEST_VALIDATED", {"request_hash": request_hash}),
        ]
        task_ws: dict[str, str] = {}
        with self._lock:
            try:
                with self._connection.begin():
                    exists = self._connection.execute(select(Run.run_id).where(Run.run_id == run_id))
                    if exists.first() is not None:
                        raise DuplicateRun(f"run {run_id!r} already exists; resume it or use another id")
                    self._connection.execute(insert(Run.__table__), [run_row])
                    if workstreams:
                        self._connection.execute(insert(Workstream.__table__), workstreams)
                    for rows in _task_rows(run_id, plan, at):
                        self._connection.execute(insert(Task.__table__), rows)
                        task_ws.update((row["task_key"], row["ws_id"]) for row in rows)
                    self._connection.execute(insert(Event.__table__), events)
            except DBAPIError as error:
                self._raise_if_stalled(error)
                raise
        states: dict[StateKey, str] = {("run", run_id): run_row["status"]}
        states.update((("workstream", ws["ws_id"]), ws["status"]) for ws in workstreams)
        task_state = initial_state("task")
        states.update((("task", key), task_state) for key in task_ws)
        self._cache.put(run_id, RunStates(states=states, task_ws=task_ws))
        return run_id

    def replace_plan(self, run_id: str, request_json: dict[str, Any], plan: Plan, changed: Sequence[str],
                     rerun: Sequence[str], *, at: str) -> None:
        """Make ``plan`` (same tasks, changed definitions) the plan of ``run_id``: the run's
        snapshot and request hash, each task's definition, a ``PLAN_APPLIED`` event listing
        ``changed``, and each task of ``rerun`` back to PENDING (checked transitions), in one
        transaction. Raises :class:`WriteStalled` when the database refuses, and the first
        refused transition's error if one is refused; either way nothing is written."""
        metadata = f'{{"request": {json.dumps(request_json)}, "plan": {plan.json_text()}}}'
        reason = "its definition changed: a plan applied with execute --plan"
        batch = WriteBatch()
        with self._committing(batch):
            for key in rerun:
                refused = self._transition_task(TransitionTask(run_id, key, TaskState.PENDING, at,
                                                               reason=reason), batch)
                if refused is not None:
                    raise refused.error
            batch.execute(self._connection)
            self._connection.execute(update(Run.__table__).where(Run.run_id == run_id).values(
                metadata_json=metadata, request_hash=request_json["request_hash"],
                plan_source=plan.source or None, updated_at=at))
            task = Task.__table__
            self._connection.execute(
                update(task).where(task.c.run_id == bindparam("b_run"), task.c.task_key == bindparam("b_key"))
                .values(spec_json=bindparam("b_spec")),
                [{"b_run": run_id, "b_key": t.key, "b_spec": canonical_json(t.to_json())} for t in plan.tasks])
            self._connection.execute(insert(Event.__table__), [_event_row(
                at, run_id, "PLAN_APPLIED", {"plan_source": plan.source, "changed": list(changed),
                                             "rerun": list(rerun),
                                             "request_hash": request_json["request_hash"]})])

    # -- the ledger's entry point -----------------------------------------------------------

    def apply(self, ops: Sequence[LedgerOp], fence_owner: str | None = None) -> list[Rejected]:
        """Apply ``ops`` in order in one transaction; return the ops that were skipped.

        A refused op does not abort the batch: an illegal transition is skipped and recorded
        as an ``ILLEGAL_TRANSITION`` event; an op naming an unknown run, task or attempt, or
        starting an attempt twice, is skipped. A transition to the current state is a no-op
        (nothing written, not refused), so replaying ops is harmless. If the transaction fails,
        nothing of the batch is written, the state cache is unchanged, and the error propagates:
        :class:`WriteStalled` when the cause may pass (then applying the same ops again later is
        exactly right). Ops of a run another runtime than ``fence_owner`` (default: this
        Store's ``lease_owner``) has taken over are refused with
        :class:`persistence.errors.LeaseLost`. After the commit the transitions are appended
        to the transitions log,
        a mirror for people: if that write fails (a full disk), the batch still counts as
        written and the failure is logged once, until the mirror works again.
        """
        if not ops:
            return []
        batch = WriteBatch()
        rejected: list[Rejected] = []
        with self._committing(batch):
            lost = self._lost_runs(ops, fence_owner)
            for op in ops:
                if lost and getattr(op, "run_id", None) in lost and not isinstance(op, EventObserved):
                    rejected.append(Rejected(op, f"run {op.run_id} was taken over by another runtime",
                                             LeaseLost(op.run_id)))
                    continue
                handler = self._handlers.get(type(op))
                if handler is None:
                    raise TypeError(f"not a ledger op: {op!r}")
                refusal = handler(op, batch)
                if refusal is not None:
                    rejected.append(refusal)
            batch.execute(self._connection)
        return rejected

    def _lost_runs(self, ops: Sequence[LedgerOp], fence_owner: str | None) -> set[str]:
        """The runs of ``ops`` another runtime than ``fence_owner`` now owns (none when this
        Store is no runtime's)."""
        owner = fence_owner or (self.lease_owner.runtime_id if self.lease_owner else None)
        if owner is None:
            return set()
        run_ids = {run_id for op in ops if (run_id := getattr(op, "run_id", None))}
        return leases.held_by_others(self._connection, owner, run_ids)

    # -- run leases (rules: domain.leases) ---------------------------------------------------

    def acquire_lease(self, run_id: str, owner: LeaseOwner, ttl_s: float) -> tuple[bool, Lease | None]:
        """Take the run's lease for ``owner`` if it is free, expired or already ``owner``'s, in
        one transaction; returns (taken, the lease as it was before) — when refused, the lease
        of the runtime that holds it. Raises UnknownEntity for an unknown run and WriteStalled
        when the database refuses for a cause that may pass."""
        with self._lock:
            try:
                with self._connection.begin():
                    if self._connection.execute(select(Run.run_id).where(Run.run_id == run_id)).first() is None:
                        raise UnknownEntity(f"unknown run {run_id!r}")
                    before = leases.read(self._connection, run_id)
                    now = _now()
                    taken = leases.try_acquire(self._connection, run_id, owner, now, expiry(now, ttl_s))
                    if not taken:
                        # Read again: a taker that won while this one waited for the row (on
                        # PostgreSQL) committed after the first read.
                        before = leases.read(self._connection, run_id)
            except DBAPIError as error:
                self._raise_if_stalled(error)
                raise
        return taken, before

    def renew_leases(self, owner_id: str, run_ids: Iterable[str], ttl_s: float) -> set[str]:
        """Extend ``owner_id``'s leases of ``run_ids``; returns the runs it has lost."""
        with self._lock:
            try:
                with self._connection.begin():
                    now = _now()
                    return leases.renew(self._connection, owner_id, set(run_ids), now, expiry(now, ttl_s))
            except DBAPIError as error:
                self._raise_if_stalled(error)
                raise

    def release_leases(self, owner_id: str, run_ids: Iterable[str]) -> None:
        """End ``owner_id``'s leases of ``run_ids`` now (a finished run, a runtime stopping)."""
        with self._lock:
            try:
                with self._connection.begin():
                    leases.release(self._connection, owner_id, set(run_ids), _now())
            except DBAPIError as error:
                self._raise_if_stalled(error)
                raise

    @contextmanager
    def _committing(self, batch: WriteBatch) -> Iterator[None]:
        """One transaction under the write lock for what the body puts in ``batch`` and the
        state cache: if it fails nothing is written, the cache is rolled back and a cause that
        may pass is raised as :class:`WriteStalled`; once committed, the cache keeps its changes
        and the batch's transitions are mirrored to the transitions log."""
        with self._lock:
            try:
                with self._connection.begin():
                    yield
            except DBAPIError as error:
                self._cache.rollback()
                self._raise_if_stalled(error)
                raise
            except BaseException:
                self._cache.rollback()
                raise
            self._cache.commit()
            if self._log is not None and batch.transitions:
                self._mirror("".join(batch.log_lines()).encode())

    def _raise_if_stalled(self, error: DBAPIError) -> None:
        cause = stall_cause(error)
        if cause is not None:
            raise WriteStalled(cause, self.database, str(error.orig)) from error

    def _mirror(self, lines: bytes) -> None:
        assert self._log is not None
        try:
            self._log.write(lines)
        except OSError as error:
            if not self._log_failed:
                log.warning("transitions_log_unwritable", path=self._log.name, error=error.strerror)
            self._log_failed = True
        else:
            self._log_failed = False

    # -- single-op API (each its own transaction) -------------------------------------------

    def update_run_status(self, run_id: str, new_status: str, reason: str = "") -> None:
        """Raises IllegalTransition (after recording it) or UnknownEntity."""
        self._apply_one(TransitionRun(run_id, new_status, utc_now_iso(), reason))

    def update_workstream_status(
        self, run_id: str, ws_id: str, new_status: str, reason: str = ""
    ) -> None:
        """Raises IllegalTransition (after recording it) or UnknownEntity."""
        self._apply_one(TransitionWorkstream(run_id, ws_id, new_status, utc_now_iso(), reason))

    def update_task_state(self, run_id: str, task_key: str, new_state: str, reason: str = "") -> None:
        """Raises IllegalTransition (after recording it) or UnknownEntity."""
        self._apply_one(TransitionTask(run_id, task_key, new_state, utc_now_iso(), reason=reason))

    def record_step_attempt(
        self,
        run_id: str,
        ws_id: str,
        step_name: str,
        attempt: int,
        *,
        adapter: str = "",
        pid: int | None = None,
        pid_create_time: float | None = None,
        log_path: str = "",
        started_at: str | None = None,
    ) -> None:
        """Record the start of attempt ``attempt`` of task ``step_name`` (status IN_PROGRESS).

        Raises UnknownEntity for an unknown task, DuplicateAttempt if already recorded.
        """
        started = AttemptStarted(
            run_id,
            ws_id,
            step_name,
            attempt,
            adapter,
            started_at or utc_now_iso(),
            pid=pid,
            pid_create_time=pid_create_time,
            log_path=log_path,
        )
        self._apply_one(started)

    def finish_step_attempt(
        self,
        run_id: str,
        step_name: str,
        attempt: int,
        status: str,
        *,
        exit_code: int | None = None,
        duration_s: float | None = None,
        max_rss_bytes: int | None = None,
        cpu_s: float | None = None,
        error_class: str = "",
        message: str = "",
        gate_output: str = "",
        completed_at: str | None = None,
    ) -> None:
        """Record the end of an attempt (``status``: the task state it ended in).

        Also sets the task's exit_code and error_class. Raises UnknownEntity if the attempt was
        never started.
        """
        finished = AttemptFinished(
            run_id,
            step_name,
            attempt,
            status,
            completed_at or utc_now_iso(),
            exit_code=exit_code,
            duration_s=duration_s,
            max_rss_bytes=max_rss_bytes,
            cpu_s=cpu_s,
            error_class=error_class,
            message=message,
            gate_output=gate_output,
        )
        self._apply_one(finished)

    def record_error(
        self,
        run_id: str,
        ws_id: str,
        step_name: str,
        error_code: str,
        signature: str,
        message: str,
        context_json: str = "",
    ) -> int:
        """Count an error; return how often this (run, ws, step, signature) has been seen."""
        observed = ErrorObserved(
            run_id, ws_id, step_name, error_code, signature, message, utc_now_iso(), context_json
        )
        self._apply_one(observed)
        return self._reader.error_count(run_id, ws_id, step_name, signature)

    def record_event(
        self,
        run_id: str | None,
        ws_id: str | None,
        event_type: str,
        payload: dict[str, Any] | None = None,
        *,
        task_key: str | None = None,
    ) -> None:
        """Insert an event; ``payload`` is stored as JSON."""
        payload_json = json.dumps(payload) if payload is not None else ""
        self._apply_one(
            EventObserved(event_type, utc_now_iso(), run_id, ws_id, task_key, payload_json)
        )

    # -- reads (committed data, separate connections) ---------------------------------------

    def find_run_by_request_hash(self, request_hash: str) -> str | None:
        return self._reader.find_run_by_request_hash(request_hash)

    def get_run(self, run_id: str, metadata: bool = True) -> dict[str, Any] | None:
        return self._reader.get_run(run_id, metadata)

    def list_runs(self) -> list[dict[str, Any]]:
        return self._reader.list_runs()

    def get_workstreams(self, run_id: str) -> list[dict[str, Any]]:
        return self._reader.get_workstreams(run_id)

    def get_tasks(self, run_id: str, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        return self._reader.get_tasks(run_id, states)

    def get_attempts(self, run_id: str, task_key: str | None = None) -> list[dict[str, Any]]:
        return self._reader.get_attempts(run_id, task_key)

    def cached_count(self, run_id: str) -> int:
        return self._reader.cached_count(run_id)

    def completed_by_cache_key(self, cache_keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        return self._reader.completed_by_cache_key(cache_keys)

    def get_errors(self, run_id: str) -> list[dict[str, Any]]:
        return self._reader.get_errors(run_id)

    def get_events(
        self, run_id: str, after_id: int = 0, types: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        return self._reader.get_events(run_id, after_id, types)

    def task_counts(self, run_id: str) -> dict[str, int]:
        return self._reader.task_counts(run_id)

    def get_routing_decisions(self, run_id: str) -> list[dict[str, Any]]:
        return self._reader.get_routing_decisions(run_id)

    def inspect_summary(self) -> dict[str, Any]:
        return self._reader.inspect_summary()

    def close(self) -> None:
        """Release the connection and the log file; the engine stays the caller's."""
        with self._lock:
            self._connection.close()
            if self._log is not None:
                self._log.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- op handlers: validate against the cache, queue rows on the batch ---------------------

    def _apply_one(self, op: LedgerOp) -> None:
        rejected = self.apply([op])
        if rejected:
            raise rejected[0].error

    def _run(self, run_id: str) -> RunStates | None:
        run = self._cache.get(run_id)
        if run is None:
            run = load_run_states(self._connection, run_id)
            if run is not None:
                self._cache.put(run_id, run)
        return run

    def _transition_run(self, op: TransitionRun, batch: WriteBatch) -> Rejected | None:
        run = self._run(op.run_id)
        if run is None:
            return _unknown(op, f"unknown run {op.run_id!r}")
        return self._transition(op, batch, run, "run", op.run_id, None, None, batch.run_status)

    def _transition_workstream(self, op: TransitionWorkstream, batch: WriteBatch) -> Rejected | None:
        run = self._run(op.run_id)
        if run is None or ("workstream", op.ws_id) not in run.states:
            return _unknown(op, f"unknown workstream {op.ws_id!r} of run {op.run_id!r}")
        return self._transition(
            op, batch, run, "workstream", op.ws_id, op.ws_id, None, batch.workstream_status
        )

    def _transition_task(self, op: TransitionTask, batch: WriteBatch) -> Rejected | None:
        run = self._run(op.run_id)
        ws_id = run.task_ws.get(op.task_key) if run is not None else None
        if run is None or ws_id is None:
            return _unknown(op, f"unknown task {op.task_key!r} of run {op.run_id!r}")
        def write(change: Transition) -> None:
            batch.task_state(change, op.adapter)

        return self._transition(op, batch, run, "task", op.task_key, ws_id, op.task_key, write)

    def _transition(
        self,
        op: TransitionRun | TransitionWorkstream | TransitionTask,
        batch: WriteBatch,
        run: RunStates,
        entity: EntityKind,
        key: str,
        ws_id: str | None,
        event_task_key: str | None,
        write: Callable[[Transition], None],
    ) -> Rejected | None:
        current = run.states[(entity, key)]
        if current == op.to_state:
            return None
        try:
            check_transition(entity, current, op.to_state, key)
        except IllegalTransition as exc:
            payload = {"entity": entity, "key": key, "from": current, "to": op.to_state}
            batch.event(
                op.at, "ILLEGAL_TRANSITION", op.run_id, ws_id, event_task_key, json.dumps(payload)
            )
            return Rejected(op, str(exc), exc)
        self._cache.set_state(run, (entity, key), op.to_state)
        change = Transition(op.at, op.run_id, entity, key, current, op.to_state, op.reason)
        batch.transition(change, ws_id, event_task_key)
        write(change)
        return None

    def _attempt_started(self, op: AttemptStarted, batch: WriteBatch) -> Rejected | None:
        run = self._run(op.run_id)
        ws_id = run.task_ws.get(op.task_key) if run is not None else None
        if run is None or ws_id is None:
            return _unknown(op, f"unknown task {op.task_key!r} of run {op.run_id!r}")
        attempt = (op.task_key, op.attempt)
        if attempt in run.attempts:
            reason = (
                f"attempt {op.attempt} of task {op.task_key!r} of run {op.run_id!r}"
                " was already started"
            )
            return Rejected(op, reason, DuplicateAttempt(reason))
        self._cache.add(run.attempts, attempt)
        # The task's own workstream, not the sender's idea of it, keeps attempts consistent.
        batch.attempt_started(op, ws_id)
        return None

    def _attempt_finished(self, op: AttemptFinished, batch: WriteBatch) -> Rejected | None:
        run = self._run(op.run_id)
        if run is None or (op.task_key, op.attempt) not in run.attempts:
            return _unknown(
                op, f"unknown attempt {op.attempt} of task {op.task_key!r} of run {op.run_id!r}"
            )
        batch.attempt_finished(op)
        return None

    def _error_observed(self, op: ErrorObserved, batch: WriteBatch) -> Rejected | None:
        run = self._run(op.run_id)
        if run is None:
            return _unknown(op, f"unknown run {op.run_id!r}")
        error = (op.ws_id, op.step_name, op.signature)
        if error in run.errors:
            batch.error_repeated(op)
        else:
            self._cache.add(run.errors, error)
            batch.error_new(op)
        return None

    def _event_observed(self, op: EventObserved, batch: WriteBatch) -> Rejected | None:
        # Events need no known run (no foreign key): the audit trail takes everything.
        batch.event(op.at, op.event_type, op.run_id, op.ws_id, op.task_key, op.payload_json or None)
        return None

    def _routing_decided(self, op: RoutingDecided, batch: WriteBatch) -> Rejected | None:
        if self._run(op.run_id) is None:
            return _unknown(op, f"unknown run {op.run_id!r}")
        batch.routing(op)
        return None


    def _patch_recorded(self, op: PatchRecorded, batch: WriteBatch) -> Rejected | None:
        if self._run(op.run_id) is None:
            return _unknown(op, f"unknown run {op.run_id!r}")
        batch.patch(op)
        return None

    def _runtime_beat(self, op: RuntimeBeat, batch: WriteBatch) -> Rejected | None:
        batch.heartbeat(op)
        return None

    def _audit_recorded(self, op: AuditRecorded, batch: WriteBatch) -> Rejected | None:
        # No known run needed: a refusal may name a run that does not exist.
        batch.audit(op)
        return None

    def get_patches(self, run_id: str) -> list[dict[str, Any]]:
        """Patch history rows of the run in the order they were recorded; ``files`` is a list."""
        return self._reader.get_patches(run_id)


def _now() -> datetime:
    return datetime.now(UTC)


def _unknown(op: LedgerOp, reason: str) -> Rejected:
    return Rejected(op, reason, UnknownEntity(reason))


def _event_row(at: str, run_id: str, event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": at,
        "run_id": run_id,
        "ws_id": None,
        "task_key": None,
        "event_type": event_type,
        "payload_json": json.dumps(payload),
    }


def _workstream_rows(run_id: str, plan: Plan, at: str) -> list[dict[str, Any]]:
    """The plan's workstream rows, all in the initial state."""
    return [
        {
            "run_id": run_id,
            "ws_id": ws.id,
            "status": initial_state("workstream"),
            "depends_on": json.dumps(list(ws.depends_on)),
            "title": ws.title or None,
            "created_at": at,
            "updated_at": at,
            "metadata_json": json.dumps(ws.to_json(with_tasks=False)),
        }
        for ws in plan.workstreams
    ]


def _task_rows(run_id: str, plan: Plan, at: str) -> Iterator[list[dict[str, Any]]]:
    """The plan's task rows, all pending, in chunks of :data:`ROWS_PER_INSERT`, so a plan of any
    size costs one chunk of row dicts at a time."""
    chunk: list[dict[str, Any]] = []
    for task in plan.tasks:
        chunk.append({
            "run_id": run_id,
            "task_key": task.key,
            "ws_id": task.workstream_id,
            "tool": task.tool,
            "adapter": None,
            "state": initial_state("task"),
            "priority": task.priority,
            "attempts": 0,
            "exit_code": None,
            "error_class": None,
            "created_at": at,
            "updated_at": at,
            "started_at": None,
            "finished_at": None,
            "spec_json": canonical_json(task.to_json()),
        })
        if len(chunk) >= ROWS_PER_INSERT:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
