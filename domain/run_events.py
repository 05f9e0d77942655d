"""The vocabulary of the run core: the events it is fed and the effects it returns.

Events are facts that reached the Scheduler (an executor's report, a timer, a control
command's consequences); effects are what the Scheduler must carry out (write to the ledger,
start an attempt, kill a process, set a timer). Both are plain frozen values: the core holds
no thread, clock or I/O, so every decision is tested by feeding events and reading effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from domain.cache import CacheHit
from domain.errors import ErrorClass
from domain.outcomes import Verdict
from domain.plan import Plan, TaskSpec
from domain.results import ResultRef
from domain.states import RunState, TaskState, WorkstreamState


class Phase(StrEnum):
    """What a running attempt is doing after its tool started."""

    STATIC = "static"  # static acceptance checks (lint, imports)
    RUNTIME = "runtime"  # runtime acceptance checks (tests)
    FIXING = "fixing"  # an agent's fix round after a failed check
    AWAITING = "awaiting"  # a person has been asked to approve


# -- events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunOpened:
    """Start or resume ``run_id``. ``task_states``/``ws_states``/``attempts``/``failures`` are
    what the ledger holds; ``interrupted`` the attempts a dead runtime left IN_PROGRESS;
    ``reset`` None resumes every unsuccessful task, else only these and their dependants."""

    run_id: str
    plan: Plan
    log_dir: str
    task_states: Mapping[str, TaskState] = field(default_factory=dict)
    ws_states: Mapping[str, WorkstreamState] = field(default_factory=dict)
    attempts: Mapping[str, int] = field(default_factory=dict)
    failures: Mapping[str, int] = field(default_factory=dict)
    interrupted: tuple[tuple[str, int], ...] = ()
    reset: tuple[str, ...] | None = None
    # Results as inputs and incremental runs: the results (``results``) and cache keys
    # (``keys``) completed tasks recorded; the definition digest of each cacheable task
    # (``definitions``); the tasks whose earlier result is reused (``cached``).
    results: Mapping[str, ResultRef] = field(default_factory=dict)
    keys: Mapping[str, str] = field(default_factory=dict)
    definitions: Mapping[str, str] = field(default_factory=dict)
    cached: Mapping[str, CacheHit] = field(default_factory=dict)
    costs: Mapping[str, float] = field(default_factory=dict)  # agent attempts' cost so far, per task


@dataclass(frozen=True, slots=True)
class Route:
    """The router's answer for one task: ``adapter`` empty means no adapter can take it."""

    task_key: str
    adapter: str
    reason: str


@dataclass(frozen=True, slots=True)
class Routed:
    run_id: str
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class AttemptBegan:
    """An executor started attempt ``attempt``; ``pid`` is None when no process runs it."""

    run_id: str
    task_key: str
    attempt: int
    pid: int | None = None
    create_time: float | None = None
    report: Any = field(default=None, compare=False)  # the executor's record, passed back untouched


@dataclass(frozen=True, slots=True)
class PhaseBegan:
    """A running attempt entered ``phase``; ``detail`` is the prompt or the fix reason."""

    run_id: str
    task_key: str
    attempt: int
    phase: Phase
    detail: str = ""
    round: int = 0


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """An attempt ended with ``verdict`` (see :mod:`domain.outcomes`)."""

    run_id: str
    task_key: str
    attempt: int
    verdict: Verdict
    duration_s: float | None = None
    gate_output: str = ""
    report: Any = field(default=None, compare=False)  # the executor's record, passed back untouched
    result: ResultRef | None = None  # what it returned or wrote, when anything
    cache_key: str = ""  # the key it completed under, when it is cacheable
    cost_usd: float | None = None  # what the attempt's agent reported spending


@dataclass(frozen=True, slots=True)
class ChangesRecorded:
    """The Workspace committed (or discarded) what an attempt changed in its worktree."""

    run_id: str
    task_key: str
    attempt: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class WorktreeReady:
    """The Workspace made (or found again) a workstream's worktree; ``error`` if it could not.
    ``env``: variables every task of the workstream gets (its port block)."""

    run_id: str
    ws_id: str
    path: str = ""
    error: str = ""
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class IntegrationEnded:
    """A workstream's branch was merged (``merged``), left for review, or not (``conflicts``
    or ``error`` say why)."""

    run_id: str
    ws_id: str
    merged: bool
    branch: str = ""
    target: str = ""
    commit: str = ""
    conflicts: tuple[str, ...] = ()
    error: str = ""
    resolve_path: str = ""  # the merge is waiting for an agent in this integration worktree
    hunks: str = ""


@dataclass(frozen=True, slots=True)
class RetryDue:
    run_id: str
    task_key: str


@dataclass(frozen=True, slots=True)
class BreakerDue:
    adapter: str


@dataclass(frozen=True, slots=True)
class Tick:
    """A second passed: a chance to notice that nothing can move."""


@dataclass(frozen=True, slots=True)
class ExecutorDown:
    """The executor of ``adapter`` died or hung: its attempts are lost (a tool crash)."""

    adapter: str
    error: str


@dataclass(frozen=True, slots=True)
class ExecutorUp:
    adapter: str


@dataclass(frozen=True, slots=True)
class DispatchRefused:
    """An attempt could not be handed to its executor (between death and restart)."""

    run_id: str
    task_key: str
    attempt: int
    adapter: str


@dataclass(frozen=True, slots=True)
class LedgerHold:
    """``holding``: the ledger cannot commit, so nothing new may start until it can."""

    holding: bool


Event = (
    RunOpened | Routed | AttemptBegan | PhaseBegan | AttemptEnded | ChangesRecorded | WorktreeReady
    | IntegrationEnded | RetryDue | BreakerDue | Tick | ExecutorDown | ExecutorUp | DispatchRefused | LedgerHold
)


# -- effects -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TaskMoved:
    """Record (and show) a task's new state; ``done``/``total`` count terminal tasks."""

    run_id: str
    task_key: str
    state: TaskState
    reason: str
    attempt: int
    adapter: str
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class WorkstreamMoved:
    run_id: str
    ws_id: str
    state: WorkstreamState


@dataclass(frozen=True, slots=True)
class RunMoved:
    """Record the run's new state; ``finished`` when it ended (the run leaves the core)."""

    run_id: str
    state: RunState
    reason: str
    done: int
    total: int
    finished: bool


@dataclass(frozen=True, slots=True)
class ErrorCounted:
    run_id: str
    ws_id: str
    task_key: str
    error_class: ErrorClass
    signature: str
    message: str
    gate_output: str = ""


@dataclass(frozen=True, slots=True)
class Noted:
    """An event for the ledger's event log (``payload`` becomes its JSON)."""

    run_id: str | None
    event_type: str
    task_key: str | None
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Announced:
    """A line for whoever watches, with no state change behind it (FIXING, WAITING, ...)."""

    run_id: str
    subject: str
    label: str
    detail: str
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class ReportAccepted:
    """An executor's report is current: write ``report`` (its record) to the ledger as it is,
    with ``cache_key`` as its key when given (a key the core knew before the attempt ran)."""

    report: Any
    cache_key: str = ""


@dataclass(frozen=True, slots=True)
class AttemptOpened:
    """Record an attempt's start that no executor reported (a lost attempt, a merge)."""

    run_id: str
    ws_id: str
    task_key: str
    attempt: int
    adapter: str


@dataclass(frozen=True, slots=True)
class AttemptClosed:
    """Record an attempt's end that no executor reported; ``duration_s`` None when unknown;
    ``result`` and ``cache_key`` what a completed merge step produced and the key it had."""

    run_id: str
    task_key: str
    attempt: int
    verdict: Verdict
    duration_s: float | None = None
    result: ResultRef | None = None
    cache_key: str = ""


@dataclass(frozen=True, slots=True)
class RouteRequested:
    run_id: str
    tasks: tuple[TaskSpec, ...]
    open_circuits: frozenset[str]
    load: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Dispatched:
    """Start ``attempt`` of ``task`` on ``adapter``'s executor, output to ``log_path``."""

    run_id: str
    task: TaskSpec
    attempt: int
    adapter: str
    log_path: str
    inputs: tuple[tuple[str, ResultRef], ...] = ()  # the upstream results the task takes
    cache_basis: str = ""  # the key without files_in (see domain.cache); "" when not cacheable


@dataclass(frozen=True, slots=True)
class AttemptReused:
    """Record attempt ``attempt`` of ``task_key`` as completed by reusing ``hit``'s result."""

    run_id: str
    ws_id: str
    task_key: str
    attempt: int
    hit: CacheHit


@dataclass(frozen=True, slots=True)
class CancelRequested:
    adapter: str
    run_id: str
    task_key: str
    attempt: int


@dataclass(frozen=True, slots=True)
class ApprovalRelayed:
    adapter: str
    run_id: str
    task_key: str
    attempt: int
    approved: bool
    who: str
    comment: str


@dataclass(frozen=True, slots=True)
class ProcessKill:
    pid: int
    create_time: float


@dataclass(frozen=True, slots=True)
class TimerSet:
    delay_s: float
    event: RetryDue | BreakerDue


@dataclass(frozen=True, slots=True)
class WorktreeWanted:
    """Make (or find again) the workstream's worktree and prepare it: ``copy``, ``link``,
    ``setup`` and a block of ``ports`` (None: the default size) as the workstream says."""

    run_id: str
    ws_id: str
    repo: str
    setup: tuple[str, ...] = ()
    copy: tuple[str, ...] = ()
    link: tuple[str, ...] = ()
    ports: int | None = None


@dataclass(frozen=True, slots=True)
class CaptureWanted:
    run_id: str
    ws_id: str
    task_key: str
    attempt: int
    keep: bool


@dataclass(frozen=True, slots=True)
class IntegrationWanted:
    """Merge (``mode`` "merge") or leave the workstream's branch; see FinishWorkstream for
    ``on_conflict``, ``resolution`` and ``resolution_failure``."""

    run_id: str
    ws_id: str
    target_branch: str | None
    mode: str
    on_conflict: str = "fail"
    resolution: str = ""
    resolution_failure: str = ""


Effect = (
    TaskMoved | WorkstreamMoved | RunMoved | ErrorCounted | Noted | Announced | ReportAccepted | AttemptOpened
    | AttemptClosed | RouteRequested | Dispatched | CancelRequested | ApprovalRelayed | ProcessKill | TimerSet
    | WorktreeWanted | CaptureWanted | IntegrationWanted | AttemptReused
)
