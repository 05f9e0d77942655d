"""The formal state machines for runs, workstreams and tasks.

Every write of a state goes through :func:`check_transition`; the Ledger refuses (and records
as an event) anything this module does not allow. The tables are data, so the documentation in
``docs/state_machine.md`` and the tests read the same source.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class RunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PARTIAL = "partial"
    ABANDONED = "abandoned"
    QUARANTINED = "quarantined"
    CANCELLED = "cancelled"


class WorkstreamState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    EDITING = "editing"
    STATIC_CHECK = "static_check"
    FIXING = "fixing"
    RUNTIME_CHECK = "runtime_check"
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"
    ABANDONED = "abandoned"


class TaskState(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    VALIDATING = "VALIDATING"
    RETRY_WAIT = "RETRY_WAIT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    BLOCKED = "BLOCKED"
    CANCELLED = "CANCELLED"


EntityKind = Literal["run", "workstream", "task"]

#: How the reason of a task that failed but may (``allow_failure``) begins; displays show its
#: state as ``FAILED (allowed)``.
FAILURE_ALLOWED = "(allowed)"

_R = RunState
RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    _R.PENDING: frozenset({_R.RUNNING, _R.ABANDONED, _R.CANCELLED}),
    _R.RUNNING: frozenset(
        {_R.COMPLETED, _R.FAILED, _R.PARTIAL, _R.ABANDONED, _R.QUARANTINED, _R.CANCELLED}
    ),
    # A finished-but-unsuccessful run may be resumed or retried; a completed one may not.
    _R.FAILED: frozenset({_R.RUNNING, _R.ABANDONED}),
    _R.PARTIAL: frozenset({_R.RUNNING, _R.ABANDONED}),
    _R.QUARANTINED: frozenset({_R.RUNNING, _R.ABANDONED}),
    _R.CANCELLED: frozenset({_R.RUNNING, _R.ABANDONED}),
    _R.COMPLETED: frozenset(),
    _R.ABANDONED: frozenset(),
}

_W = WorkstreamState
_W_ANY_ACTIVE = {_W.FAILED, _W.ABANDONED}
WORKSTREAM_TRANSITIONS: dict[WorkstreamState, frozenset[WorkstreamState]] = {
    _W.PENDING: frozenset({_W.READY, _W.BLOCKED, *_W_ANY_ACTIVE}),
    _W.READY: frozenset({_W.EDITING, _W.BLOCKED, *_W_ANY_ACTIVE}),
    # A workstream with no checks of a phase passes straight on; the seed's chain
    # editing -> static_check -> runtime_check -> done is the path when both exist.
    _W.EDITING: frozenset({_W.STATIC_CHECK, _W.RUNTIME_CHECK, _W.DONE, _W.BLOCKED, *_W_ANY_ACTIVE}),
    # Back to editing from a check phase: a task of it was queued again (a retry, an
    # interrupted check) — work goes on, nothing failed.
    _W.STATIC_CHECK: frozenset({_W.EDITING, _W.FIXING, _W.RUNTIME_CHECK, _W.DONE, *_W_ANY_ACTIVE}),
    _W.FIXING: frozenset({_W.EDITING, _W.STATIC_CHECK, _W.RUNTIME_CHECK, *_W_ANY_ACTIVE}),
    _W.RUNTIME_CHECK: frozenset({_W.EDITING, _W.DONE, _W.FIXING, *_W_ANY_ACTIVE}),
    # Failed and blocked workstreams come back when a run is resumed or a task retried.
    _W.FAILED: frozenset({_W.READY, _W.PENDING, _W.ABANDONED}),
    _W.BLOCKED: frozenset({_W.PENDING, _W.READY, _W.ABANDONED, _W.FAILED}),
    _W.DONE: frozenset(),
    _W.ABANDONED: frozenset(),
}

_T = TaskState
_T_RESTARTABLE = {_T.PENDING, _T.QUEUED}
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    _T.PENDING: frozenset({_T.QUEUED, _T.BLOCKED, _T.CANCELLED}),
    # QUEUED -> FAILED / RETRY_WAIT: the attempt was lost before its tool started (no adapter
    # can take the task, or the executor crashed on it).
    # QUEUED -> COMPLETED: an incremental run reused the result of an earlier run's attempt.
    _T.QUEUED: frozenset(
        {_T.IN_PROGRESS, _T.AWAITING_APPROVAL, _T.PENDING, _T.CANCELLED, _T.BLOCKED, _T.FAILED, _T.RETRY_WAIT,
         _T.COMPLETED}
    ),
    _T.IN_PROGRESS: frozenset(
        {
            _T.VALIDATING,
            _T.AWAITING_APPROVAL,
            _T.COMPLETED,
            _T.FAILED,
            _T.TIMEOUT,
            _T.RETRY_WAIT,
            _T.CANCELLED,
            _T.QUEUED,
        }
    ),
    _T.AWAITING_APPROVAL: frozenset({_T.COMPLETED, _T.FAILED, _T.TIMEOUT, _T.CANCELLED, _T.QUEUED}),
    _T.VALIDATING: frozenset(
        {_T.COMPLETED, _T.FAILED, _T.TIMEOUT, _T.RETRY_WAIT, _T.CANCELLED, _T.QUEUED}
    ),
    _T.RETRY_WAIT: frozenset({_T.QUEUED, _T.CANCELLED, _T.BLOCKED}),
    # Terminal but not final: a manual retry sends a task back to PENDING.
    _T.FAILED: frozenset(_T_RESTARTABLE),
    _T.TIMEOUT: frozenset(_T_RESTARTABLE),
    _T.BLOCKED: frozenset(_T_RESTARTABLE | {_T.CANCELLED}),
    _T.CANCELLED: frozenset(_T_RESTARTABLE),
    # COMPLETED -> PENDING: `execute --plan` applied a changed definition of the task (or of one
    # it depends on) to the run; nothing else ever runs a completed task again.
    _T.COMPLETED: frozenset({_T.PENDING}),
}

TERMINAL_TASK_STATES = frozenset({_T.COMPLETED, _T.FAILED, _T.TIMEOUT, _T.BLOCKED, _T.CANCELLED})
SUCCESSFUL_TASK_STATES = frozenset({_T.COMPLETED})
# Ended without success: a resume or a ``retry`` sends these back to PENDING.
UNSUCCESSFUL_TASK_STATES = TERMINAL_TASK_STATES - SUCCESSFUL_TASK_STATES
ACTIVE_TASK_STATES = frozenset({_T.IN_PROGRESS, _T.VALIDATING, _T.AWAITING_APPROVAL})
TERMINAL_RUN_STATES = frozenset(
    {_R.COMPLETED, _R.FAILED, _R.PARTIAL, _R.ABANDONED, _R.QUARANTINED, _R.CANCELLED}
)

_TABLES: dict[str, tuple[type[StrEnum], dict]] = {
    "run": (RunState, RUN_TRANSITIONS),
    "workstream": (WorkstreamState, WORKSTREAM_TRANSITIONS),
    "task": (TaskState, TASK_TRANSITIONS),
}


class IllegalTransition(ValueError):
    """A state change the entity's state machine does not allow.

    Carries the entity kind and both states so the Ledger can record it as an event.
    """

    def __init__(self, entity: str, from_state: str | None, to_state: str, key: str = "") -> None:
        self.entity = entity
        self.from_state = from_state
        self.to_state = to_state
        self.key = key
        where = f" {key}" if key else ""
        super().__init__(f"illegal {entity} transition{where}: {from_state} -> {to_state}")


def initial_state(entity: EntityKind) -> str:
    """The state every new entity of this kind is created in."""
    enum, _ = _TABLES[entity]
    return next(iter(enum)).value


def check_transition(entity: EntityKind, from_state: str | None, to_state: str, key: str = "") -> None:
    """Raise :class:`IllegalTransition` unless ``from_state -> to_state`` is allowed.

    ``from_state`` of ``None`` means creation: only the initial state is allowed. A transition
    to the same state is a no-op and allowed, so replaying a record is harmless.
    """
    enum, table = _TABLES[entity]
    try:
        target = enum(to_state)
    except ValueError:
        raise IllegalTransition(entity, from_state, to_state, key) from None
    if from_state is None:
        if target.value != initial_state(entity):
            raise IllegalTransition(entity, from_state, to_state, key)
        return
    try:
        source = enum(from_state)
    except ValueError:
        raise IllegalTransition(entity, from_state, to_state, key) from None
    if source is target:
        return
    if target not in table[source]:
        raise IllegalTransition(entity, from_state, to_state, key)


def is_allowed(entity: EntityKind, from_state: str | None, to_state: str) -> bool:
    try:
        check_transition(entity, from_state, to_state)
    except IllegalTransition:
        return False
    return True
