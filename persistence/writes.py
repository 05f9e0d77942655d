"""The Store's hot-path SQL and the batch that runs it: one ``executemany`` per statement.

A :class:`WriteBatch` collects the rows of one transaction and executes them statement by
statement in a fixed order, which turns thousands of ops into a dozen round trips. Reordering
is safe because the statements touch disjoint columns, except where ``_ORDER`` says otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Executable, bindparam, case, func, insert, update

from domain.states import TERMINAL_TASK_STATES, TaskState
from messages.ledger import (
    AttemptFinished,
    AttemptStarted,
    AuditRecorded,
    ErrorObserved,
    PatchRecorded,
    RoutingDecided,
    RuntimeBeat,
)
from persistence.models import (
    AuditEntry,
    ErrorRecord,
    Event,
    PatchRecord,
    RoutingDecision,
    Run,
    RuntimeHeartbeat,
    StepAttempt,
    Task,
    Workstream,
)

_runs, _workstreams, _tasks = Run.__table__, Workstream.__table__, Task.__table__
_attempts, _errors = StepAttempt.__table__, ErrorRecord.__table__

# Bind names carry a ``b_`` prefix: SQLAlchemy reserves bare column names in SET clauses.
_RUN_STATUS = (
    update(_runs)
    .where(_runs.c.run_id == bindparam("b_run_id"))
    .values(
        status=bindparam("b_status"),
        updated_at=bindparam("b_at"),
        status_reason=bindparam("b_reason"),
    )
)
_WORKSTREAM_STATUS = (
    update(_workstreams)
    .where(
        _workstreams.c.run_id == bindparam("b_run_id"),
        _workstreams.c.ws_id == bindparam("b_ws_id"),
    )
    .values(status=bindparam("b_status"), updated_at=bindparam("b_at"))
)
_TASK_WHERE = (_tasks.c.run_id == bindparam("b_run_id"), _tasks.c.task_key == bindparam("b_key"))
_TASK_STATE = (
    update(_tasks)
    .where(*_TASK_WHERE)
    .values(
        state=bindparam("b_state"),
        updated_at=bindparam("b_at"),
        # Keep the first start: retries do not move started_at.
        started_at=func.coalesce(_tasks.c.started_at, bindparam("b_started")),
        # Cleared when a task leaves a terminal state (a retry), so it means "finished now".
        finished_at=bindparam("b_finished"),
        adapter=func.coalesce(bindparam("b_adapter"), _tasks.c.adapter),
    )
)
_TASK_ATTEMPTS = (
    update(_tasks)
    .where(*_TASK_WHERE)
    .values(
        attempts=case(
            (_tasks.c.attempts < bindparam("b_attempt"), bindparam("b_attempt")),
            else_=_tasks.c.attempts,
        )
    )
)
_TASK_EXIT = (
    update(_tasks)
    .where(*_TASK_WHERE)
    .values(exit_code=bindparam("b_exit_code"), error_class=bindparam("b_error_class"))
)
_ATTEMPT_START = insert(_attempts)
_ATTEMPT_FINISH = (
    update(_attempts)
    .where(
        _attempts.c.run_id == bindparam("b_run_id"),
        _attempts.c.step_name == bindparam("b_key"),
        _attempts.c.attempt == bindparam("b_attempt"),
    )
    .values(
        status=bindparam("b_status"),
        completed_at=bindparam("b_at"),
        exit_code=bindparam("b_exit_code"),
        duration_s=bindparam("b_duration_s"),
        max_rss_bytes=bindparam("b_max_rss_bytes"),
        cpu_s=bindparam("b_cpu_s"),
        error_class=bindparam("b_error_class"),
        message=bindparam("b_message"),
        gate_output=bindparam("b_gate_output"),
        result_json=bindparam("b_result_json"),
        result_file=bindparam("b_result_file"),
        outputs_json=bindparam("b_outputs_json"),
        cache_key=bindparam("b_cache_key"),
        cached_from=bindparam("b_cached_from"),
        tokens_in=bindparam("b_tokens_in"),
        tokens_out=bindparam("b_tokens_out"),
        cost_usd=bindparam("b_cost_usd"),
    )
)
_ERROR_NEW = insert(_errors)
_ERROR_REPEAT = (
    update(_errors)
    .where(
        _errors.c.run_id == bindparam("b_run_id"),
        _errors.c.ws_id == bindparam("b_ws_id"),
        _errors.c.step_name == bindparam("b_step"),
        _errors.c.signature == bindparam("b_signature"),
    )
    .values(
        count=_errors.c.count + 1,
        last_seen_at=bindparam("b_at"),
        message=bindparam("b_message"),
    )
)
_EVENT = insert(Event.__table__)
_ROUTING = insert(RoutingDecision.__table__)
_PATCH = insert(PatchRecord.__table__)
_heartbeats = RuntimeHeartbeat.__table__
_HEARTBEAT_NEW = insert(_heartbeats)
_HEARTBEAT = (
    update(_heartbeats)
    .where(_heartbeats.c.runtime_id == bindparam("b_runtime_id"))
    .values(beat_at=bindparam("b_at"), stopped_at=bindparam("b_stopped_at"), stop_reason=bindparam("b_reason"),
            db_write_json=bindparam("b_db_write_json"))
)
_AUDIT = insert(AuditEntry.__table__)

# Execution order. A row must exist before its update: attempts start before they finish,
# an error is inserted before it repeats. Everything else touches disjoint columns, and rows
# of one statement keep the order of their ops.
_ORDER: tuple[Executable, ...] = (
    _RUN_STATUS,
    _WORKSTREAM_STATUS,
    _TASK_STATE,
    _ATTEMPT_START,
    _ATTEMPT_FINISH,
    _TASK_ATTEMPTS,
    _TASK_EXIT,
    _ERROR_NEW,
    _ERROR_REPEAT,
    _EVENT,
    _ROUTING,
    _PATCH,
    _HEARTBEAT_NEW,
    _HEARTBEAT,
    _AUDIT,
)


@dataclass(frozen=True, slots=True)
class Transition:
    """An accepted state change; :meth:`log_line` is its line in ``transitions.jsonl``."""

    at: str
    run_id: str
    entity: str
    key: str
    from_state: str
    to_state: str
    reason: str

    def payload(self) -> dict[str, str]:
        return {
            "entity": self.entity,
            "key": self.key,
            "from": self.from_state,
            "to": self.to_state,
            "reason": self.reason,
        }

    def log_line(self) -> str:
        return json.dumps({"at": self.at, "run_id": self.run_id, **self.payload()}) + "\n"


@dataclass(slots=True)
class WriteBatch:
    """The writes of one transaction, and the transitions they make (for the log mirror)."""

    transitions: list[Transition] = field(default_factory=list)
    _rows: dict[Executable, list[dict[str, Any]]] = field(
        default_factory=lambda: {statement: [] for statement in _ORDER}
    )

    def execute(self, connection: Connection) -> None:
        for statement, rows in self._rows.items():
            if rows:
                connection.execute(statement, rows)

    def log_lines(self) -> Iterator[str]:
        return (t.log_line() for t in self.transitions)

    def transition(self, t: Transition, ws_id: str | None, task_key: str | None) -> None:
        """An accepted change: its STATE_CHANGED event now, its log line after the commit."""
        self.transitions.append(t)
        self.event(t.at, "STATE_CHANGED", t.run_id, ws_id, task_key, json.dumps(t.payload()))

    def run_status(self, t: Transition) -> None:
        self._rows[_RUN_STATUS].append(
            {"b_run_id": t.run_id, "b_status": t.to_state, "b_at": t.at, "b_reason": t.reason or None}
        )

    def workstream_status(self, t: Transition) -> None:
        self._rows[_WORKSTREAM_STATUS].append(
            {"b_run_id": t.run_id, "b_ws_id": t.key, "b_status": t.to_state, "b_at": t.at}
        )

    def task_state(self, t: Transition, adapter: str) -> None:
        self._rows[_TASK_STATE].append(
            {
                "b_run_id": t.run_id,
                "b_key": t.key,
                "b_state": t.to_state,
                "b_at": t.at,
                "b_started": t.at if t.to_state == TaskState.IN_PROGRESS else None,
                "b_finished": t.at if t.to_state in TERMINAL_TASK_STATES else None,
                "b_adapter": adapter or None,
            }
        )

    def attempt_started(self, op: AttemptStarted, ws_id: str) -> None:
        self._rows[_ATTEMPT_START].append(
            {
                "run_id": op.run_id,
                "ws_id": ws_id,
                "step_name": op.task_key,
                "attempt": op.attempt,
                "status": TaskState.IN_PROGRESS.value,
                "adapter": op.adapter or None,
                "pid": op.pid,
                "pid_create_time": op.pid_create_time,
                "log_path": op.log_path or None,
                "started_at": op.started_at,
            }
        )
        self._rows[_TASK_ATTEMPTS].append(
            {"b_run_id": op.run_id, "b_key": op.task_key, "b_attempt": op.attempt}
        )

    def attempt_finished(self, op: AttemptFinished) -> None:
        error_class = op.error_class or None
        self._rows[_ATTEMPT_FINISH].append(
            {
                "b_run_id": op.run_id,
                "b_key": op.task_key,
                "b_attempt": op.attempt,
                "b_status": op.status,
                "b_at": op.completed_at,
                "b_exit_code": op.exit_code,
                "b_duration_s": op.duration_s,
                "b_max_rss_bytes": op.max_rss_bytes,
                "b_cpu_s": op.cpu_s,
                "b_error_class": error_class,
                "b_message": op.message or None,
                "b_gate_output": op.gate_output or None,
                "b_result_json": op.result_json or None,
                "b_result_file": op.result_file or None,
                "b_outputs_json": op.outputs_json or None,
                "b_cache_key": op.cache_key or None,
                "b_cached_from": op.cached_from or None,
                "b_tokens_in": op.tokens_in,
                "b_tokens_out": op.tokens_out,
                "b_cost_usd": op.cost_usd,
            }
        )
        self._rows[_TASK_EXIT].append(
            {
                "b_run_id": op.run_id,
                "b_key": op.task_key,
                "b_exit_code": op.exit_code,
                "b_error_class": error_class,
            }
        )

    def error_new(self, op: ErrorObserved) -> None:
        self._rows[_ERROR_NEW].append(
            {
                "run_id": op.run_id,
                "ws_id": op.ws_id,
                "step_name": op.step_name,
                "error_code": op.error_code,
                "signature": op.signature,
                "message": op.message,
                "context_json": op.context_json or None,
                "count": 1,
                "first_seen_at": op.at,
                "last_seen_at": op.at,
            }
        )

    def error_repeated(self, op: ErrorObserved) -> None:
        self._rows[_ERROR_REPEAT].append(
            {
                "b_run_id": op.run_id,
                "b_ws_id": op.ws_id,
                "b_step": op.step_name,
                "b_signature": op.signature,
                "b_at": op.at,
                "b_message": op.message,
            }
        )

    def event(
        self,
        at: str,
        event_type: str,
        run_id: str | None,
        ws_id: str | None = None,
        task_key: str | None = None,
        payload_json: str | None = None,
    ) -> None:
        self._rows[_EVENT].append(
            {
                "timestamp": at,
                "run_id": run_id,
                "ws_id": ws_id,
                "task_key": task_key,
                "event_type": event_type,
                "payload_json": payload_json,
            }
        )

    def patch(self, op: PatchRecorded) -> None:
        self._rows[_PATCH].append(
            {
                "run_id": op.run_id,
                "ws_id": op.ws_id,
                "task_key": op.task_key,
                "attempt": op.attempt,
                "base_commit": op.base_commit,
                "head_commit": op.head_commit or None,
                "files_json": op.files_json,
                "patch_sha256": op.patch_sha256,
                "patch_path": op.patch_path or None,
                "recorded_at": op.at,
            }
        )

    def audit(self, op: AuditRecorded) -> None:
        self._rows[_AUDIT].append(
            {
                "at": op.at,
                "uid": op.uid,
                "user": op.user,
                "via": op.via,
                "command": op.command,
                "args_json": op.args_json,
                "run_id": op.run_id,
                "accepted": int(op.accepted),
                "message": op.message,
            }
        )

    def routing(self, op: RoutingDecided) -> None:
        self._rows[_ROUTING].append(
            {
                "run_id": op.run_id,
                "task_key": op.task_key,
                "candidates_json": json.dumps(list(op.candidates)),
                "chosen": op.chosen,
                "reason": op.reason or None,
                "decided_at": op.at,
            }
        )

    def heartbeat(self, op: RuntimeBeat) -> None:
        if op.at == op.started_at and not op.stopped:
            self._rows[_HEARTBEAT_NEW].append(
                {
                    "runtime_id": op.runtime_id,
                    "pid": op.pid,
                    "hostname": op.hostname,
                    "state_dir": op.state_dir,
                    "started_at": op.started_at,
                    "beat_at": op.at,
                    "db_write_json": op.db_write_json or None,
                }
            )
            return
        self._rows[_HEARTBEAT].append(
            {
                "b_runtime_id": op.runtime_id,
                "b_at": op.at,
                "b_stopped_at": op.at if op.stopped else None,
                "b_reason": op.reason or None,
                "b_db_write_json": op.db_write_json or None,
            }
        )
