"""Messages between the Scheduler, Router, Executors and Supervisor."""

from __future__ import annotations

from dataclasses import dataclass

from domain.plan import Plan, TaskSpec
from messages.base import Message


@dataclass(frozen=True, slots=True)
class StartRun(Message):
    """Scheduler: run (or resume) ``run_id``; tasks in ``completed`` are already done."""

    run_id: str
    plan: Plan
    concurrency: int
    state_dir: str
    task_states: tuple[tuple[str, str], ...] = ()
    attempts: tuple[tuple[str, int], ...] = ()
    workstream_states: tuple[tuple[str, str], ...] = ()
    # Failed attempts per task that count against its retry budget (interrupted ones do not).
    failures: tuple[tuple[str, int], ...] = ()
    # Tasks whose last attempt was IN_PROGRESS when the runtime that ran it died.
    interrupted: tuple[tuple[str, int], ...] = ()
    # None: resume (every unsuccessful task runs again); else only these tasks and their
    # dependants are reset.
    reset: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class RouteTasks(Message):
    """Router: decide adapters for tasks that became ready together (one reply for all, so
    the Scheduler can start them in priority order). ``open_circuits`` and ``load`` are the
    Scheduler's view when it asked."""

    run_id: str
    tasks: tuple[TaskSpec, ...]
    open_circuits: frozenset[str] = frozenset()
    load: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class TaskRouted(Message):
    task_key: str
    adapter: str
    reason: str


@dataclass(frozen=True, slots=True)
class TasksRouted(Message):
    run_id: str
    routes: tuple[TaskRouted, ...]


@dataclass(frozen=True, slots=True)
class ExecuteTask(Message):
    """Executor: run one attempt of ``task``; stream output to ``log_path``."""

    run_id: str
    task: TaskSpec
    attempt: int
    log_path: str


@dataclass(frozen=True, slots=True)
class TaskValidating(Message):
    """The tool succeeded; acceptance checks of ``phase`` (``static`` or ``runtime``) run now."""

    run_id: str
    task_key: str
    attempt: int
    at: str
    phase: str = "runtime"


@dataclass(frozen=True, slots=True)
class TaskFixing(Message):
    """A check failed; the agent runs again (fix round ``round``) with the failure in its prompt."""

    run_id: str
    task_key: str
    attempt: int
    round: int
    reason: str
    at: str


@dataclass(frozen=True, slots=True)
class RunProgress(Message):
    """Published by the Scheduler to progress listeners after every task state change."""

    run_id: str
    task_key: str
    state: str
    at: str
    done: int
    total: int
    detail: str = ""
    finished_run_state: str = ""


@dataclass(frozen=True, slots=True)
class ActorDied(Message):
    """Supervisor: child ``name`` stopped because of ``error``."""

    name: str
    error: str


@dataclass(frozen=True, slots=True)
class TaskAwaitingApproval(Message):
    """A human step is waiting for a person's approval."""

    run_id: str
    task_key: str
    attempt: int
    prompt: str
    at: str


@dataclass(frozen=True, slots=True)
class CancelAttempt(Message):
    """Executor: stop this attempt now (kill its process tree); it ends CANCELLED."""

    run_id: str
    task_key: str
    attempt: int


@dataclass(frozen=True, slots=True)
class ApprovalDecision(Message):
    """Executor (human): the decision on a waiting attempt."""

    run_id: str
    task_key: str
    attempt: int
    approved: bool
    who: str
    comment: str = ""


@dataclass(frozen=True, slots=True)
class ExecutorLost(Message):
    """Scheduler: the executor of ``adapter`` died or hung; its attempts are lost."""

    adapter: str
    error: str


@dataclass(frozen=True, slots=True)
class ExecutorRestored(Message):
    """Scheduler: the executor of ``adapter`` is running again."""

    adapter: str
