"""The Scheduler: owns every task's state and decides what starts when.

It asks the Router where ready tasks go, starts them on their adapter's executor when the
global limit, the adapter's limit and the adapter's circuit breaker allow, and turns executor
reports into state transitions it tells the Ledger. Dependants of a task that finally failed
are marked BLOCKED, never skipped. Failed attempts are retried per the task's policy; a run
whose failures repeat one signature too often is quarantined. Control messages (pause,
resume, cancel, retry, approve, drain) are asked of it and answered with a small result.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from actors.base import SupervisedActor
from actors.directory import LEDGER, ROUTER, WORKSPACE, Directory, PeerUnavailable, executor_name
from actors.timers import TimerService
from domain.breaker import BreakerChange, CircuitBreaker, CircuitState
from domain.errors import ErrorClass, error_signature
from domain.retry import RetryPolicy
from domain.routing import AdapterInfo
from domain.scheduling import RunBook, workstream_path
from domain.states import (
    ACTIVE_TASK_STATES,
    TERMINAL_TASK_STATES,
    RunState,
    TaskState,
    WorkstreamState,
)
from messages import (
    AttemptFinished,
    AttemptStarted,
    ErrorObserved,
    EventObserved,
    ExecuteTask,
    RouteTasks,
    RunProgress,
    StartRun,
    TasksRouted,
    TaskValidating,
    TransitionRun,
    TransitionTask,
    TransitionWorkstream,
)
from messages.base import Message
from messages.control import (
    Approval,
    CancelWork,
    Drain,
    PauseRuns,
    ResumeRuns,
    RetryTask,
    StatusQuery,
    StopRuns,
)
from messages.runtime import (
    ApprovalDecision,
    CancelAttempt,
    ExecutorLost,
    ExecutorRestored,
    TaskAwaitingApproval,
    TaskFixing,
)
from messages.workspace import (
    CaptureChanges,
    ChangesCaptured,
    FinishWorkstream,
    PrepareWorkstream,
    WorkstreamFinished,
    WorkstreamPrepared,
)
from persistence.clock import utc_now_iso
from planning.graph import task_dependencies, topological_order
from planning.model import Plan, TaskSpec, Workstream

log = structlog.get_logger("orchestrate.scheduler")

_UNSUCCESSFUL = frozenset({TaskState.FAILED, TaskState.TIMEOUT, TaskState.BLOCKED, TaskState.CANCELLED})
# Failures that say the tool is broken (not the task's input or its checks): they count
# toward the adapter's circuit breaker.
_BREAKER_FAILURES = frozenset({ErrorClass.TOOL_ERROR, ErrorClass.CRASH, ErrorClass.TIMEOUT, ErrorClass.TRANSIENT})


@dataclass(frozen=True, slots=True)
class RetryDue(Message):
    run_id: str
    task_key: str


@dataclass(frozen=True, slots=True)
class BreakerDue(Message):
    adapter: str


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    concurrency: int
    adapters: tuple[AdapterInfo, ...]
    quarantine_after: int = 10  # failures with one signature in one run before quarantine


@dataclass(slots=True)
class _Running:
    adapter: str
    attempt: int
    pid: int | None = None
    create_time: float | None = None
    started: bool = False  # the executor reported AttemptStarted


@dataclass(slots=True)
class _Run:
    run_id: str
    plan: Plan
    book: RunBook
    specs: dict[str, TaskSpec]
    attempts: dict[str, int]
    failures: Counter[str]
    ws_states: dict[str, WorkstreamState]
    log_dir: Path
    running: dict[str, _Running] = field(default_factory=dict)
    signatures: Counter[str] = field(default_factory=Counter)
    paused: bool = False
    cancelling: bool = False
    quarantine_reason: str = ""
    awaiting: dict[str, str] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)  # task -> static | runtime | fixing
    # Git isolation (workstreams with a repo): see the "worktrees" section of the Scheduler.
    isolated: dict[str, Workstream] = field(default_factory=dict)
    ws_paths: dict[str, str] = field(default_factory=dict)
    preparing: set[str] = field(default_factory=set)
    parked: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # ws -> (task, adapter|"")
    ws_busy: dict[str, str] = field(default_factory=dict)  # ws -> the task holding its worktree
    capturing: dict[str, AttemptFinished] = field(default_factory=dict)
    merging: set[str] = field(default_factory=set)
    finished_ws: set[str] = field(default_factory=set)
    failed_ws: dict[str, str] = field(default_factory=dict)


class ControlRefused(Exception):
    """A control request that cannot be done in the current state; the message says why."""


class SchedulerActor(SupervisedActor):
    def __init__(
        self,
        name: str,
        directory: Directory,
        config: SchedulerConfig,
        timers: TimerService,
        progress: Callable[[RunProgress], None],
        kill_process: Callable[[int, float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, directory)
        self.config = config
        self.adapters = {info.name: info for info in config.adapters}
        self.timers = timers
        self.progress = progress
        self.kill_process = kill_process
        self.clock = clock
        self.runs: dict[str, _Run] = {}
        self.adapter_running: Counter[str] = Counter()
        self.breakers = {info.name: CircuitBreaker(info.name, info.breaker) for info in config.adapters}
        self.paused_all = False
        self.draining = False
        # Adapters whose executor is dead and not yet restarted: nothing is sent to them.
        self.down: set[str] = set()
        # Tasks that became ready while handling one message; routed together afterwards.
        self.to_route: dict[str, list[TaskSpec]] = {}

    # -- mailbox -------------------------------------------------------------------------------
    def handle(self, message: object) -> object:
        result: object = None
        if isinstance(message, StartRun):
            self._start_run(message)
        elif isinstance(message, TasksRouted):
            self._routed(message)
        elif isinstance(message, AttemptStarted):
            self._started(message)
        elif isinstance(message, TaskValidating):
            self._validating(message)
        elif isinstance(message, TaskAwaitingApproval):
            self._awaiting(message)
        elif isinstance(message, TaskFixing):
            self._fixing(message)
        elif isinstance(message, WorkstreamPrepared):
            self._prepared(message)
        elif isinstance(message, ChangesCaptured):
            self._captured(message)
        elif isinstance(message, WorkstreamFinished):
            self._ws_finished(message)
        elif isinstance(message, AttemptFinished):
            self._finished(message)
        elif isinstance(message, RetryDue):
            self._retry_due(message)
        elif isinstance(message, BreakerDue):
            self._breaker_due(message)
        elif isinstance(message, ExecutorLost):
            self._executor_lost(message)
        elif isinstance(message, ExecutorRestored):
            self.down.discard(message.adapter)
            self._dispatch()
        else:
            result = self._control(message)
        self._flush_routes()
        return result

    def _flush_routes(self) -> None:
        if not self.to_route:
            return
        open_circuits = frozenset(n for n, b in self.breakers.items() if b.state is CircuitState.OPEN)
        load = tuple(sorted(self.adapter_running.items()))
        for run_id, tasks in self.to_route.items():
            self.directory.tell(ROUTER, RouteTasks(run_id, tuple(tasks), open_circuits, load))
        self.to_route.clear()

    # -- starting a run --------------------------------------------------------------------------
    def _start_run(self, message: StartRun) -> None:
        if message.run_id in self.runs:
            log.warning("run_already_active", run_id=message.run_id)
            return
        plan = message.plan
        deps = task_dependencies(plan)
        order = topological_order(deps)
        specs = {task.key: task for task in plan.tasks}
        recorded = {key: TaskState(state) for key, state in message.task_states}
        run = _Run(
            run_id=message.run_id,
            plan=plan,
            book=RunBook(
                deps={key: deps[key] for key in order},
                priorities={key: specs[key].priority for key in order},
                workstream_of={key: specs[key].workstream_id for key in order},
                states={key: state.value for key, state in recorded.items()},
            ),
            specs=specs,
            attempts=dict(message.attempts),
            failures=Counter(dict(message.failures)),
            ws_states={ws.id: WorkstreamState.PENDING for ws in plan.workstreams}
            | {ws: WorkstreamState(state) for ws, state in message.workstream_states},
            log_dir=Path(message.state_dir) / "logs" / message.run_id,
            isolated={ws.id: ws for ws in plan.workstreams if ws.isolation == "worktree" and ws.repo},
        )
        self.runs[run.run_id] = run
        self._ledger(TransitionRun(run.run_id, RunState.RUNNING.value, utc_now_iso(), "execution started"))
        for key, attempt in message.interrupted:
            self._ledger(
                AttemptFinished(
                    run_id=run.run_id,
                    task_key=key,
                    attempt=attempt,
                    status=TaskState.FAILED.value,
                    completed_at=utc_now_iso(),
                    error_class=ErrorClass.INTERRUPTED.value,
                    message="interrupted: the runtime running this attempt stopped",
                )
            )
        to_reset = (
            {key for key, state in recorded.items() if state in _UNSUCCESSFUL}
            if message.reset is None
            else self._retry_closure(run, message.reset)
        )
        for key in run.book.states:
            state = run.book.states[key]
            if key in to_reset and state in _UNSUCCESSFUL:
                run.failures[key] = 0
                self._transition(run, key, TaskState.PENDING, "resumed: tried again")
            elif state in ACTIVE_TASK_STATES or state is TaskState.RETRY_WAIT:
                self._transition(run, key, TaskState.QUEUED, "resumed: attempt was interrupted")
        for key, state in list(run.book.states.items()):
            if state is TaskState.QUEUED:
                self._route(run, key)
        for key in run.book.ready_pending():
            self._queue(run, key)
        self._after_change(run)

    def _retry_closure(self, run: _Run, keys: tuple[str, ...]) -> set[str]:
        """The tasks to reset when ``keys`` are retried: each, the unsuccessful prerequisites
        it waits on (else it could never start), and its unsuccessful dependants."""
        closure: set[str] = set()
        frontier = list(keys)
        while frontier:
            key = frontier.pop()
            if key in closure:
                continue
            closure.add(key)
            frontier += [p for p in run.book.deps[key] if run.book.states[p] in _UNSUCCESSFUL]
        downstream = list(closure)
        while downstream:
            key = downstream.pop()
            for dependant in run.book.dependants[key]:
                if dependant not in closure and run.book.states[dependant] in _UNSUCCESSFUL:
                    closure.add(dependant)
                    downstream.append(dependant)
        return closure

    # -- task lifecycle ----------------------------------------------------------------------------
    def _queue(self, run: _Run, key: str) -> None:
        self._transition(run, key, TaskState.QUEUED, "dependencies completed")
        self._route(run, key)

    def _route(self, run: _Run, key: str) -> None:
        ws_id = run.specs[key].workstream_id
        if ws_id in run.isolated and ws_id not in run.ws_paths:
            run.parked.setdefault(ws_id, []).append((key, ""))
            self._prepare(run, ws_id)
            return
        self.to_route.setdefault(run.run_id, []).append(run.specs[key])

    def _routed(self, message: TasksRouted) -> None:
        run = self.runs.get(message.run_id)
        if run is None:
            return
        for routed in message.routes:
            if run.book.states[routed.task_key] is not TaskState.QUEUED or run.book.is_enqueued(routed.task_key):
                continue
            if routed.adapter:
                self._enqueue(run, routed.task_key, routed.adapter)
            else:
                self._fail(run, routed.task_key, TaskState.FAILED, ErrorClass.BAD_INPUT, routed.reason, attempt=0)
        self._after_change(run)

    def _limits(self) -> dict[str, int]:
        """Each adapter's limit now: its concurrency, closed to 0 by an open circuit, and to one
        probe at a time when half-open."""
        limits: dict[str, int] = {}
        for name, info in self.adapters.items():
            breaker = self.breakers[name]
            if name in self.down or breaker.state is CircuitState.OPEN:
                limits[name] = 0
            elif breaker.state is CircuitState.HALF_OPEN:
                limits[name] = self.adapter_running[name] + (0 if breaker.probe_in_flight else 1)
            elif info.concurrency is not None:
                limits[name] = info.concurrency
        return limits

    def _dispatch(self) -> None:
        if self.paused_all:
            return
        for run in list(self.runs.values()):
            if run.paused or run.cancelling or run.quarantine_reason:
                continue
            free = self.config.concurrency - sum(self.adapter_running.values())
            if free <= 0:
                return
            for choice in run.book.take_dispatchable(free, self.adapter_running, self._limits()):
                self._start_attempt(run, choice.task_key, choice.adapter)

    def _start_attempt(self, run: _Run, key: str, adapter: str) -> None:
        attempt = run.attempts.get(key, 0) + 1
        run.attempts[key] = attempt
        run.running[key] = _Running(adapter, attempt)
        self.adapter_running[adapter] += 1
        self.breakers[adapter].started()
        spec = self._in_workspace(run, run.specs[key])
        name = spec.id if attempt == 1 else f"{spec.id}.attempt{attempt}"
        log_path = run.log_dir / spec.workstream_id / f"{name}.log"
        try:
            self.directory.tell(executor_name(adapter), ExecuteTask(run.run_id, spec, attempt, str(log_path)))
        except PeerUnavailable:
            # The executor is between death and restart: the task waits for it, unharmed.
            self._release(run, key)
            run.attempts[key] = attempt - 1
            self.down.add(adapter)
            run.book.enqueue(key, adapter)

    def _started(self, message: AttemptStarted) -> None:
        run = self.runs.get(message.run_id)
        running = run.running.get(message.task_key) if run else None
        if run is None or running is None or running.attempt != message.attempt:
            return
        running.pid, running.create_time, running.started = message.pid, message.pid_create_time, True
        self._transition(run, message.task_key, TaskState.IN_PROGRESS, "", message.attempt, message.adapter)
        self._ledger(message)
        self._event(run, "TASK_STARTED", message.task_key,
                    {"attempt": message.attempt, "adapter": message.adapter, "pid": message.pid})

    def _validating(self, message: TaskValidating) -> None:
        run = self.runs.get(message.run_id)
        if run is not None and message.task_key in run.running:
            run.phases[message.task_key] = message.phase
            self._transition(run, message.task_key, TaskState.VALIDATING, f"{message.phase} checks",
                             message.attempt)
            self._refresh_workstreams(run)

    def _fixing(self, message: TaskFixing) -> None:
        run = self.runs.get(message.run_id)
        if run is None or message.task_key not in run.running:
            return
        run.phases[message.task_key] = "fixing"
        self._event(run, "FIX_ROUND", message.task_key,
                    {"attempt": message.attempt, "round": message.round, "reason": message.reason})
        self.progress(RunProgress(run.run_id, message.task_key, "FIXING", message.at, run.book.done_count(),
                                  len(run.book.states), f"round {message.round}: {message.reason}"))
        run.book.dirty_workstreams.add(run.specs[message.task_key].workstream_id)
        self._refresh_workstreams(run)

    def _awaiting(self, message: TaskAwaitingApproval) -> None:
        run = self.runs.get(message.run_id)
        if run is None or message.task_key not in run.running:
            return
        run.awaiting[message.task_key] = message.prompt
        self._transition(run, message.task_key, TaskState.AWAITING_APPROVAL, message.prompt, message.attempt)
        self._event(run, "APPROVAL_REQUESTED", message.task_key, {"attempt": message.attempt, "prompt": message.prompt})

    def _finished(self, message: AttemptFinished) -> None:
        run = self.runs.get(message.run_id)
        running = run.running.get(message.task_key) if run else None
        if run is None or running is None or running.attempt != message.attempt:
            return
        key = message.task_key
        ws_id = run.specs[key].workstream_id
        if ws_id in run.ws_paths and key not in run.capturing:
            # What the attempt changed is recorded (and committed, if it succeeded) before
            # anything else happens, so the next task of the workstream starts clean.
            run.capturing[key] = message
            self.directory.tell(WORKSPACE, CaptureChanges(run.run_id, ws_id, key, message.attempt,
                                                          keep=message.status == TaskState.COMPLETED.value))
            return
        run.capturing.pop(key, None)
        run.phases.pop(key, None)
        self._free_workstream(run, ws_id, key)
        self._release(run, key)
        run.awaiting.pop(key, None)
        outcome = TaskState(message.status)
        self._ledger(message)
        self._breaker_outcome(running.adapter, outcome, message.error_class, message.message, run)
        if outcome is TaskState.COMPLETED:
            took = f"in {message.duration_s:.2f}s" if message.duration_s is not None else ""
            self._transition(run, key, TaskState.COMPLETED, took, message.attempt)
            self._event(run, "TASK_COMPLETED", key, {"attempt": message.attempt, "duration_s": message.duration_s})
            for dependant in run.book.ready_dependants(key):
                self._queue(run, dependant)
        elif outcome is TaskState.CANCELLED or run.cancelling:
            self._fail(run, key, TaskState.CANCELLED, ErrorClass.CANCELLED, message.message or "cancelled",
                       message.attempt, recorded=True)
        else:
            signature = self._record_error(run, key, message.error_class, message.message, message.gate_output)
            if message.error_class != ErrorClass.INTERRUPTED:
                run.failures[key] += 1
            self._count_signature(run, signature, message.message)
            policy = RetryPolicy.for_task(run.specs[key])
            if policy.should_retry(run.failures[key], message.error_class) and not run.quarantine_reason:
                delay = policy.delay_s(run.failures[key])
                self._transition(run, key, TaskState.RETRY_WAIT, f"{message.message}; retry in {delay:.2f}s",
                                 message.attempt)
                me, run_id = self.actor_ref, run.run_id
                self.timers.call_later(delay, lambda: me.tell(RetryDue(run_id, key)))
            elif message.error_class == ErrorClass.INTERRUPTED:
                self._transition(run, key, TaskState.QUEUED, message.message)
                self._route(run, key)
            else:
                self._fail(run, key, outcome, message.error_class, message.message, message.attempt, recorded=True)
        self._after_change(run)

    def _retry_due(self, message: RetryDue) -> None:
        run = self.runs.get(message.run_id)
        if run is None or run.book.states.get(message.task_key) is not TaskState.RETRY_WAIT:
            return
        if run.quarantine_reason or run.cancelling:
            return
        self._transition(run, message.task_key, TaskState.QUEUED, "retry backoff elapsed")
        self._route(run, message.task_key)

    def _lost_attempt(self, run: _Run, key: str, reason: str) -> AttemptFinished:
        running = run.running[key]
        return AttemptFinished(
            run_id=run.run_id,
            task_key=key,
            attempt=running.attempt,
            status=TaskState.FAILED.value,
            completed_at=utc_now_iso(),
            error_class=ErrorClass.CRASH.value,
            message=reason,
        )

    def _executor_lost(self, message: ExecutorLost) -> None:
        """An executor died or hung: its attempts are crashed attempts (retried per policy,
        counted by the breaker), and their processes are killed."""
        self.down.add(message.adapter)
        for run in list(self.runs.values()):
            for key, running in list(run.running.items()):
                if running.adapter != message.adapter:
                    continue
                if running.pid is not None and running.create_time is not None:
                    self.kill_process(running.pid, running.create_time)
                if not running.started:
                    # The executor died on this very task, before it could report a start:
                    # the attempt still gets its row, so every attempt is accounted for.
                    self._ledger(AttemptStarted(run.run_id, run.specs[key].workstream_id, key, running.attempt,
                                                running.adapter, utc_now_iso()))
                self._finished(self._lost_attempt(run, key, f"executor {message.adapter} crashed: {message.error}"))

    # -- failure, blocking, quarantine ---------------------------------------------------------------
    def _fail(
        self,
        run: _Run,
        key: str,
        state: TaskState,
        error_class: str,
        message: str,
        attempt: int,
        recorded: bool = False,
    ) -> None:
        if not recorded:
            self._record_error(run, key, error_class, message, "")
        run.book.forget_queued(key)
        self._transition(run, key, state, message, attempt)
        self._event(run, "TASK_FAILED", key,
                    {"attempt": attempt, "state": state.value, "error_class": error_class, "message": message})
        for dependant in run.book.blocked_by(key):
            run.book.forget_queued(dependant)
            self._transition(run, dependant, TaskState.BLOCKED, f"dependency {key} ended {state.value}")

    def _count_signature(self, run: _Run, signature: str, message: str) -> None:
        run.signatures[signature] += 1
        count = run.signatures[signature]
        if count > self.config.quarantine_after and not run.quarantine_reason:
            run.quarantine_reason = (
                f"quarantined: {count} failures with signature {signature} "
                f"(threshold {self.config.quarantine_after}); last: {message}"
            )
            self._event(run, "RUN_QUARANTINED", None, {"signature": signature, "count": count, "reason": run.quarantine_reason})

    def _release(self, run: _Run, key: str) -> None:
        running = run.running.pop(key, None)
        if running is not None:
            self.adapter_running[running.adapter] -= 1

    def _after_change(self, run: _Run) -> None:
        self._refresh_workstreams(run)
        self._check_finished(run)
        self._dispatch()

    def _check_finished(self, run: _Run) -> None:
        if run.running or run.run_id not in self.runs or run.merging or run.preparing:
            return
        if run.quarantine_reason:
            outcome, reason = RunState.QUARANTINED, run.quarantine_reason
        elif run.book.is_finished():
            outcome = run.book.run_outcome()
            reason = ", ".join(f"{n} {state.lower()}" for state, n in sorted(run.book.counts().items()))
            if run.failed_ws:
                outcome = RunState.PARTIAL
                reason += "; " + "; ".join(f"{ws}: {why}" for ws, why in sorted(run.failed_ws.items()))
        else:
            return
        at = utc_now_iso()
        self._ledger(TransitionRun(run.run_id, outcome.value, at, reason))
        self._event(run, "EXECUTION_FINISHED", None, {"state": outcome.value, "tasks": run.book.counts()})
        del self.runs[run.run_id]
        total = len(run.book.states)
        self.progress(RunProgress(run.run_id, "", outcome.value, at, run.book.done_count(), total,
                                  reason, finished_run_state=outcome.value))

    # -- circuit breakers ------------------------------------------------------------------------------
    def _breaker_outcome(self, adapter: str, outcome: TaskState, error_class: str, message: str, run: _Run) -> None:
        breaker = self.breakers.get(adapter)
        if breaker is None:
            return
        if outcome is TaskState.COMPLETED:
            change = breaker.succeeded()
        elif error_class in _BREAKER_FAILURES:
            change = breaker.failed(self.clock(), message)
        else:
            return
        if change is not None:
            self._breaker_changed(change, run)

    def _breaker_due(self, message: BreakerDue) -> None:
        change = self.breakers[message.adapter].due(self.clock())
        if change is not None:
            self._breaker_changed(change, None)
            self._dispatch()

    def _breaker_changed(self, change: BreakerChange, run: _Run | None) -> None:
        payload = {"adapter": change.adapter, "state": change.state.value, "reason": change.reason}
        self._ledger(EventObserved(event_type=f"CIRCUIT_{change.state.name}", at=utc_now_iso(),
                                   run_id=run.run_id if run else None, payload_json=json.dumps(payload)))
        log.warning("circuit_changed", **payload)
        if change.state is CircuitState.OPEN and change.retry_at is not None:
            me, adapter = self.actor_ref, change.adapter
            self.timers.call_later(max(0.0, change.retry_at - self.clock()), lambda: me.tell(BreakerDue(adapter)))
            # Tasks waiting for this adapter go back to the Router, which sends them to the
            # fallback if there is one; the rest come back here and wait for the probe.
            for active in self.runs.values():
                for key in active.book.queued_for(change.adapter):
                    active.book.forget_queued(key)
                    self._route(active, key)

    # -- control -----------------------------------------------------------------------------------------
    def _control(self, message: object) -> object:
        if isinstance(message, StatusQuery):
            return self._status(message.run_id)
        if isinstance(message, PauseRuns):
            return self._set_paused(message.run_id, True)
        if isinstance(message, ResumeRuns):
            return self._set_paused(message.run_id, False)
        if isinstance(message, Drain):
            self.paused_all = self.draining = True
            return {"draining": True, "running": sum(len(r.running) for r in self.runs.values())}
        if isinstance(message, CancelWork):
            return self._cancel(message)
        if isinstance(message, RetryTask):
            return self._retry(message)
        if isinstance(message, Approval):
            return self._approve(message)
        if isinstance(message, StopRuns):
            self.paused_all = True
            for run in self.runs.values():
                for key, running in run.running.items():
                    self._tell_executor(running.adapter, CancelAttempt(run.run_id, key, running.attempt))
            return {"stopping": sum(len(r.running) for r in self.runs.values())}
        return None

    def _run(self, run_id: str) -> _Run:
        run = self.runs.get(run_id)
        if run is None:
            raise ControlRefused(f"run {run_id!r} is not active in this runtime")
        return run

    def _set_paused(self, run_id: str | None, paused: bool) -> dict[str, Any]:
        if run_id is None:
            self.paused_all = paused
            if not paused:
                self.draining = False
                for run in self.runs.values():
                    run.paused = False
        else:
            self._run(run_id).paused = paused
        for run in self.runs.values() if run_id is None else [self.runs[run_id]]:
            self._event(run, "RUN_PAUSED" if paused else "RUN_RESUMED", None, {})
        if not paused:
            self._dispatch()
        return {"paused": paused, "runs": [run_id] if run_id else sorted(self.runs)}

    def _cancel(self, message: CancelWork) -> dict[str, Any]:
        run = self._run(message.run_id)
        if message.task_key is None:
            run.cancelling = True
            keys = list(run.book.states)
        else:
            if message.task_key not in run.book.states:
                raise ControlRefused(f"run {run.run_id} has no task {message.task_key!r}")
            if run.book.states[message.task_key] in TERMINAL_TASK_STATES:
                raise ControlRefused(
                    f"task {message.task_key} already ended {run.book.states[message.task_key].value}"
                )
            keys = [message.task_key]
        killing = []
        for key in keys:
            state = run.book.states[key]
            if key in run.running:
                running = run.running[key]
                self._tell_executor(running.adapter, CancelAttempt(run.run_id, key, running.attempt))
                killing.append(key)
            elif state not in TERMINAL_TASK_STATES or (run.cancelling and state is TaskState.BLOCKED):
                self._fail(run, key, TaskState.CANCELLED, ErrorClass.CANCELLED, "cancelled by request", 0)
        self._after_change(run)
        return {"cancelled": keys, "killing": killing}

    def _retry(self, message: RetryTask) -> dict[str, Any]:
        run = self._run(message.run_id)
        if message.task_key not in run.book.states:
            raise ControlRefused(f"run {run.run_id} has no task {message.task_key!r}")
        state = run.book.states[message.task_key]
        if state not in _UNSUCCESSFUL:
            raise ControlRefused(f"task {message.task_key} is {state.value}; only failed, timed-out, "
                                 "blocked or cancelled tasks can be retried")
        reset = sorted(self._retry_closure(run, (message.task_key,)))
        for key in reset:
            run.failures[key] = 0
            self._transition(run, key, TaskState.PENDING, "retried by request")
        for key in reset:
            if run.book.states[key] is TaskState.PENDING and run.book.is_ready(key):
                self._queue(run, key)
        self._after_change(run)
        return {"retried": reset}

    def _approve(self, message: Approval) -> dict[str, Any]:
        run = self._run(message.run_id)
        state = run.book.states.get(message.task_key)
        if state is not TaskState.AWAITING_APPROVAL:
            raise ControlRefused(f"task {message.task_key} is not awaiting approval "
                                 f"(it is {state.value if state else 'unknown'})")
        running = run.running[message.task_key]
        self._event(run, "TASK_APPROVED" if message.approved else "TASK_REJECTED", message.task_key,
                    {"who": message.who, "comment": message.comment, "at": utc_now_iso(), "attempt": running.attempt})
        self._tell_executor(
            running.adapter,
            ApprovalDecision(run.run_id, message.task_key, running.attempt, message.approved, message.who, message.comment),
        )
        return {"task": message.task_key, "approved": message.approved, "who": message.who}

    def _tell_executor(self, adapter: str, message: object) -> None:
        try:
            self.directory.tell(executor_name(adapter), message)
        except PeerUnavailable:
            log.warning("executor_unavailable", adapter=adapter, message=type(message).__name__)

    def _status(self, run_id: str | None) -> dict[str, Any]:
        runs = [self._run(run_id)] if run_id else list(self.runs.values())
        return {
            "paused_all": self.paused_all,
            "draining": self.draining,
            "running": sum(self.adapter_running.values()),
            "concurrency": self.config.concurrency,
            "circuits": {name: b.state.value for name, b in self.breakers.items()},
            "queued": {name: n for name, n in self._queue_depths().items()},
            "runs": [
                {
                    "run_id": run.run_id,
                    "paused": run.paused or self.paused_all,
                    "cancelling": run.cancelling,
                    "quarantine_reason": run.quarantine_reason,
                    "counts": run.book.counts(),
                    "done": run.book.done_count(),
                    "total": len(run.book.states),
                    "running": sorted(run.running),
                    "awaiting_approval": [{"task": k, "prompt": p} for k, p in sorted(run.awaiting.items())],
                    "tasks": {key: state.value for key, state in run.book.states.items()},
                }
                for run in runs
            ],
        }

    def _queue_depths(self) -> Counter[str]:
        depths: Counter[str] = Counter()
        for run in self.runs.values():
            for adapter in run.book.queued_adapters():
                depths[adapter] += 1
        return depths

    # -- writing -----------------------------------------------------------------------------------
    def _transition(
        self, run: _Run, key: str, state: TaskState, reason: str = "", attempt: int = 0, adapter: str = ""
    ) -> None:
        previous = run.book.set_state(key, state)
        if previous is state:
            return
        at = utc_now_iso()
        self._ledger(TransitionTask(run.run_id, key, state.value, at, attempt, reason, adapter))
        self.progress(RunProgress(run.run_id, key, state.value, at, run.book.done_count(), len(run.book.states), reason))

    def _refresh_workstreams(self, run: _Run) -> None:
        """Move each workstream whose tasks changed to the state they imply, by legal steps.

        A workstream running acceptance checks shows their phase (static_check,
        runtime_check, fixing). An isolated workstream whose tasks all completed is merged
        first and becomes done (or failed, on a conflict) when the Workspace reports back.
        """
        for ws_id in run.book.take_dirty_workstreams():
            target = run.book.workstream_target(ws_id)
            if target is WorkstreamState.EDITING:
                target = self._phase_state(run, ws_id)
            if target is WorkstreamState.DONE and ws_id in run.isolated and ws_id not in run.finished_ws:
                self._finish_workstream(run, ws_id)
                target = WorkstreamState.EDITING
            self._move_workstream(run, ws_id, target)

    def _move_workstream(self, run: _Run, ws_id: str, target: WorkstreamState) -> None:
        for step in workstream_path(run.ws_states[ws_id], target):
            self._ledger(TransitionWorkstream(run.run_id, ws_id, step.value, utc_now_iso()))
            run.ws_states[ws_id] = step

    def _phase_state(self, run: _Run, ws_id: str) -> WorkstreamState:
        phases = {phase for key, phase in run.phases.items() if run.specs[key].workstream_id == ws_id}
        if "fixing" in phases:
            return WorkstreamState.FIXING
        if "static" in phases:
            return WorkstreamState.STATIC_CHECK
        if "runtime" in phases:
            return WorkstreamState.RUNTIME_CHECK
        return WorkstreamState.EDITING

    # -- worktrees ----------------------------------------------------------------------------------
    def _prepare(self, run: _Run, ws_id: str) -> None:
        if ws_id not in run.preparing:
            run.preparing.add(ws_id)
            self.directory.tell(WORKSPACE, PrepareWorkstream(run.run_id, ws_id, run.isolated[ws_id].repo or ""))

    def _prepared(self, message: WorkstreamPrepared) -> None:
        run = self.runs.get(message.run_id)
        if run is None:
            return
        run.preparing.discard(message.ws_id)
        parked = run.parked.pop(message.ws_id, [])
        if message.error:
            for key, _ in parked:
                self._fail(run, key, TaskState.FAILED, ErrorClass.BAD_INPUT,
                           f"worktree for {message.ws_id}: {message.error}", 0)
        else:
            run.ws_paths[message.ws_id] = message.path
            for key, _ in parked:
                self._route(run, key)
        self._after_change(run)

    def _enqueue(self, run: _Run, key: str, adapter: str) -> None:
        """Queue a routed task; an isolated workstream runs one task at a time in its worktree."""
        ws_id = run.specs[key].workstream_id
        if ws_id in run.isolated:
            if run.ws_busy.get(ws_id, key) != key:
                run.parked.setdefault(ws_id, []).append((key, adapter))
                return
            run.ws_busy[ws_id] = key
        run.book.enqueue(key, adapter)

    def _free_workstream(self, run: _Run, ws_id: str, key: str) -> None:
        if run.ws_busy.get(ws_id) != key:
            return
        del run.ws_busy[ws_id]
        waiting = run.parked.get(ws_id, [])
        while waiting:
            next_key, adapter = waiting.pop(0)
            if run.book.states[next_key] is TaskState.QUEUED:
                self._enqueue(run, next_key, adapter)
                return

    def _in_workspace(self, run: _Run, spec: TaskSpec) -> TaskSpec:
        """The task with its cwd moved into its workstream's worktree."""
        path = run.ws_paths.get(spec.workstream_id)
        repo = run.isolated[spec.workstream_id].repo if path else None
        if not path or not repo:
            return spec
        cwd = os.path.realpath(spec.cwd or repo)
        inside = os.path.commonpath([cwd, os.path.realpath(repo)]) == os.path.realpath(repo)
        moved = os.path.join(path, os.path.relpath(cwd, os.path.realpath(repo))) if inside else path
        return replace(spec, cwd=os.path.normpath(moved))

    def _captured(self, message: ChangesCaptured) -> None:
        run = self.runs.get(message.run_id)
        finished = run.capturing.get(message.task_key) if run else None
        if run is None or finished is None or finished.attempt != message.attempt:
            return
        if message.error:
            log.error("capture_failed", run_id=run.run_id, task=message.task_key, error=message.error)
            self._event(run, "PATCH_CAPTURE_FAILED", message.task_key, {"error": message.error})
        self._finished(finished)

    def _finish_workstream(self, run: _Run, ws_id: str) -> None:
        if ws_id in run.merging:
            return
        if ws_id not in run.ws_paths:
            self._prepare(run, ws_id)  # a resumed run: find the worktree again, then merge
            return
        workstream = run.isolated[ws_id]
        run.merging.add(ws_id)
        self.directory.tell(WORKSPACE, FinishWorkstream(run.run_id, ws_id, workstream.target_branch, workstream.merge))

    def _ws_finished(self, message: WorkstreamFinished) -> None:
        run = self.runs.get(message.run_id)
        if run is None:
            return
        ws_id = message.ws_id
        run.merging.discard(ws_id)
        run.finished_ws.add(ws_id)
        payload = {"branch": message.branch, "target": message.target_branch, "commit": message.merge_commit,
                   "conflicts": list(message.conflicts), "error": message.error}
        if message.merged:
            self._event(run, "WORKSTREAM_MERGED", None, payload | {"workstream": ws_id})
            self.progress(RunProgress(run.run_id, ws_id, "MERGED", utc_now_iso(), run.book.done_count(),
                                      len(run.book.states),
                                      f"{message.branch} into {message.target_branch} ({message.merge_commit[:10]})"))
            self._move_workstream(run, ws_id, WorkstreamState.DONE)
        elif message.conflicts or message.error:
            why = (f"merge into {message.target_branch} conflicts in {', '.join(message.conflicts)}; "
                   f"branch {message.branch} left for review") if message.conflicts else message.error
            run.failed_ws[ws_id] = why
            self._event(run, "MERGE_CONFLICT" if message.conflicts else "MERGE_FAILED", None,
                        payload | {"workstream": ws_id})
            self.progress(RunProgress(run.run_id, ws_id, "MERGE_CONFLICT", utc_now_iso(), run.book.done_count(),
                                      len(run.book.states), why))
            self._move_workstream(run, ws_id, WorkstreamState.FAILED)
        else:
            self._event(run, "BRANCH_LEFT", None, payload | {"workstream": ws_id})
            self.progress(RunProgress(run.run_id, ws_id, "BRANCH_LEFT", utc_now_iso(), run.book.done_count(),
                                      len(run.book.states), f"{message.branch} left for review"))
            self._move_workstream(run, ws_id, WorkstreamState.DONE)
        self._after_change(run)

    def _record_error(self, run: _Run, key: str, error_class: str, message: str, gate_output: str) -> str:
        spec = run.specs[key]
        signature = error_signature(error_class, message)
        self._ledger(
            ErrorObserved(
                run_id=run.run_id,
                ws_id=spec.workstream_id,
                step_name=key,
                error_code=error_class,
                signature=signature,
                message=message,
                at=utc_now_iso(),
                context_json=json.dumps({"gate_output": gate_output[-2000:]}) if gate_output else "",
            )
        )
        return signature

    def _event(self, run: _Run, event_type: str, key: str | None, payload: dict) -> None:
        ws_id = run.specs[key].workstream_id if key else None
        self._ledger(
            EventObserved(
                event_type=event_type,
                at=utc_now_iso(),
                run_id=run.run_id,
                ws_id=ws_id,
                task_key=key,
                payload_json=json.dumps(payload, sort_keys=True),
            )
        )

    def _ledger(self, op: object) -> None:
        self.directory.tell(LEDGER, op)
