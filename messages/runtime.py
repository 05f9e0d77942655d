"""Messages between the Scheduler, Router, Executors and Supervisor.

A task is named by ``run_id`` and ``task_key`` (``<workstream>/<task>``) everywhere, and one
attempt of it by ``attempt`` (1-based): a report about another attempt than the current one is
stale and ignored, so a late message can never move a task."""

from __future__ import annotations

from dataclasses import dataclass

from domain.cache import CacheHit
from domain.plan import Plan, TaskSpec
from domain.results import ResultRef
from domain.run_events import Phase
from domain.states import TaskState, WorkstreamState
from messages.base import Message


@dataclass(frozen=True, slots=True)
class StartRun(Message):
    """Scheduler: run (or resume) ``run_id`` of ``plan``, built from the ledger.

    ``state_dir``: where its logs go (``<state_dir>/logs/<run_id>``). ``task_states``,
    ``workstream_states`` and ``attempts`` (attempts made so far per task) are as recorded.
    ``failures``: failed attempts per task that count against its retry budget (interrupted
    ones do not). ``interrupted``: ``(task, attempt)`` whose attempt was IN_PROGRESS when the
    runtime that ran it died. ``reset``: None resumes every unsuccessful task; otherwise only
    these tasks, what they wait on and their dependants run again."""

    run_id: str
    plan: Plan
    state_dir: str
    task_states: tuple[tuple[str, TaskState], ...] = ()
    attempts: tuple[tuple[str, int], ...] = ()
    workstream_states: tuple[tuple[str, WorkstreamState], ...] = ()
    failures: tuple[tuple[str, int], ...] = ()
    interrupted: tuple[tuple[str, int], ...] = ()
    reset: tuple[str, ...] | None = None
    # See domain.run_events.RunOpened: recorded results and keys, definition digests of the
    # cacheable tasks, and the tasks to complete from an earlier result.
    results: tuple[tuple[str, ResultRef], ...] = ()
    keys: tuple[tuple[str, str], ...] = ()
    definitions: tuple[tuple[str, str], ...] = ()
    cached: tuple[tuple[str, CacheHit], ...] = ()
    # What agent attempts already cost, per task (a resumed run counts it against its budgets).
    costs: tuple[tuple[str, float], ...] = ()


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
    """Where one task goes: ``adapter`` (empty: nowhere, ``reason`` says why)."""

    task_key: str
    adapter: str
    reason: str


@dataclass(frozen=True, slots=True)
class TasksRouted(Message):
    """The Router's answer to one :class:`RouteTasks`, in the order asked."""

    run_id: str
    routes: tuple[TaskRouted, ...]


@dataclass(frozen=True, slots=True)
class ExecuteTask(Message):
    """Executor: run attempt ``attempt`` of ``task`` (its ``cwd`` already moved into its
    worktree, if any); stream output to ``log_path``."""

    run_id: str
    task: TaskSpec
    attempt: int
    log_path: str
    # ``(name, result)`` of each upstream task named in ``task.inputs``.
    inputs: tuple[tuple[str, ResultRef], ...] = ()
    # The task's cache key without its files_in (see domain.cache; "" when it is not
    # cacheable): the executor hashes files_in as the task starts and records the key.
    cache_basis: str = ""


@dataclass(frozen=True, slots=True)
class TaskValidating(Message):
    """The tool succeeded; acceptance checks of ``phase`` (static: lint and imports, or
    runtime: tests) run now. ``at``: when, ISO-8601 UTC."""

    run_id: str
    task_key: str
    attempt: int
    at: str
    phase: Phase = Phase.RUNTIME


@dataclass(frozen=True, slots=True)
class TaskFixing(Message):
    """A check failed; the agent runs again (fix round ``round``, 1-based) with the failure
    (``reason``: the check's label) in its prompt."""

    run_id: str
    task_key: str
    attempt: int
    round: int
    reason: str
    at: str


@dataclass(frozen=True, slots=True)
class RunProgress(Message):
    """Published by the Scheduler to progress listeners (the foreground, ``watch``, the status
    view) after every task state change and for notices.

    ``state``: a task state (``IN_PROGRESS``, ``COMPLETED`` …), a run state with
    ``finished_run_state`` set when the run ended, or a notice: ``FIXING``, ``WAITING``
    (nothing can move; ``detail`` says why), ``PAUSED``, ``RESUMED``, ``HUNG``. ``task_key`` is
    empty for run-wide notices. ``done``/``total``: terminal tasks so far / all tasks.
    ``attempt``: the attempt a task's state change concerns (0: none)."""

    run_id: str
    task_key: str
    state: str
    at: str
    done: int
    total: int
    detail: str = ""
    finished_run_state: str = ""
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class ActorDied(Message):
    """Supervisor: child ``name`` stopped because of ``error``."""

    name: str
    error: str


@dataclass(frozen=True, slots=True)
class TaskAwaitingApproval(Message):
    """A human step is waiting for a person's approval of ``prompt`` (since ``at``)."""

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
    """Executor (human): the decision on a waiting attempt; ``who`` decided (the socket peer's
    user name), with an optional ``comment``."""

    run_id: str
    task_key: str
    attempt: int
    approved: bool
    who: str
    comment: str = ""


@dataclass(frozen=True, slots=True)
class ApprovalTimedOut(Message):
    """Told by the timer to the human executor: attempt ``attempt`` of ``task_key`` waited its
    ``approval_timeout_s`` with no decision, so it ends TIMEOUT."""

    run_id: str
    task_key: str
    attempt: int


@dataclass(frozen=True, slots=True)
class ExecutorLost(Message):
    """Scheduler: the executor of ``adapter`` died or hung; its attempts are lost."""

    adapter: str
    error: str


@dataclass(frozen=True, slots=True)
class ExecutorRestored(Message):
    """Scheduler: the executor of ``adapter`` is running again."""

    adapter: str
