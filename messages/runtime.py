"""Messages between the Scheduler, Router, Executors and Supervisor."""

from __future__ import annotations

from dataclasses import dataclass

from messages.base import Message
from planning.model import Plan, TaskSpec


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


@dataclass(frozen=True, slots=True)
class RouteTasks(Message):
    """Router: decide adapters for tasks that became ready together (one reply for all, so
    the Scheduler can start them in priority order)."""

    run_id: str
    tasks: tuple[TaskSpec, ...]


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
    run_id: str
    task_key: str
    attempt: int
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
