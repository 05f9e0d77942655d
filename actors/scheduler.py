"""The Scheduler: owns every task's state and decides what starts when.

It asks the Router where a ready task goes, starts it on that adapter's executor when the
global and per-adapter limits allow, and turns executor reports into state transitions it
tells the Ledger. Dependants of a task that finally failed are marked BLOCKED, never skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from actors.base import SupervisedActor
from actors.directory import LEDGER, ROUTER, Directory, PeerUnavailable, executor_name
from actors.timers import TimerService
from domain.errors import ErrorClass, error_signature
from domain.retry import RetryPolicy
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
from persistence.clock import utc_now_iso
from planning.graph import task_dependencies, topological_order
from planning.model import Plan, TaskSpec

log = structlog.get_logger("orchestrate.scheduler")

_RESUME_AS_PENDING = frozenset(
    {TaskState.FAILED, TaskState.TIMEOUT, TaskState.BLOCKED, TaskState.CANCELLED}
)


@dataclass(frozen=True, slots=True)
class RetryDue(Message):
    run_id: str
    task_key: str


@dataclass(slots=True)
class _Run:
    run_id: str
    plan: Plan
    book: RunBook
    specs: dict[str, TaskSpec]
    attempts: dict[str, int]
    ws_states: dict[str, WorkstreamState]
    log_dir: Path
    running: dict[str, str] = field(default_factory=dict)


class SchedulerActor(SupervisedActor):
    def __init__(
        self,
        name: str,
        directory: Directory,
        concurrency: int,
        adapter_limits: Mapping[str, int],
        timers: TimerService,
        progress: Callable[[RunProgress], None],
        retry_defaults: RetryPolicy = RetryPolicy(),
    ) -> None:
        super().__init__(name, directory)
        self.concurrency = concurrency
        self.adapter_limits = dict(adapter_limits)
        self.timers = timers
        self.progress = progress
        self.retry_defaults = retry_defaults
        self.runs: dict[str, _Run] = {}
        self.adapter_running: Counter[str] = Counter()
        # Tasks that became ready while handling one message; routed together afterwards.
        self.to_route: dict[str, list[TaskSpec]] = {}

    # -- mailbox -------------------------------------------------------------------------------
    def on_receive(self, message: object) -> None:
        if isinstance(message, StartRun):
            self._start_run(message)
        elif isinstance(message, TasksRouted):
            self._routed(message)
        elif isinstance(message, AttemptStarted):
            self._started(message)
        elif isinstance(message, TaskValidating):
            self._validating(message)
        elif isinstance(message, AttemptFinished):
            self._finished(message)
        elif isinstance(message, RetryDue):
            self._retry_due(message)
        for run_id, tasks in self.to_route.items():
            self.directory.tell(ROUTER, RouteTasks(run_id, tuple(tasks)))
        self.to_route.clear()

    # -- starting a run --------------------------------------------------------------------------
    def _start_run(self, message: StartRun) -> None:
        plan = message.plan
        deps = task_dependencies(plan)
        order = topological_order(deps)
        specs = {task.key: task for task in plan.tasks}
        recorded = {key: TaskState(state) for key, state in message.task_states}
        book = RunBook(
            deps={key: deps[key] for key in order},
            priorities={key: specs[key].priority for key in order},
            workstream_of={key: specs[key].workstream_id for key in order},
            states={key: state.value for key, state in recorded.items()},
        )
        run = _Run(
            run_id=message.run_id,
            plan=plan,
            book=book,
            specs=specs,
            attempts=dict(message.attempts),
            ws_states={ws.id: WorkstreamState.PENDING for ws in plan.workstreams}
            | {ws: WorkstreamState(state) for ws, state in message.workstream_states},
            log_dir=Path(message.state_dir) / "logs" / message.run_id,
        )
        self.runs[run.run_id] = run
        self._ledger(TransitionRun(run.run_id, RunState.RUNNING.value, utc_now_iso(), "execution started"))
        for key, state in recorded.items():
            if state in _RESUME_AS_PENDING:
                self._transition(run, key, TaskState.PENDING, "resumed: tried again")
            elif state in ACTIVE_TASK_STATES or state is TaskState.RETRY_WAIT:
                self._transition(run, key, TaskState.QUEUED, "resumed: attempt was interrupted")
        for key, state in list(book.states.items()):
            if state is TaskState.QUEUED:
                self._route(run, key)
        for key in book.ready_pending():
            self._queue(run, key)
        self._refresh_workstreams(run)
        self._check_finished(run)

    # -- task lifecycle ----------------------------------------------------------------------------
    def _queue(self, run: _Run, key: str) -> None:
        self._transition(run, key, TaskState.QUEUED, "dependencies completed")
        self._route(run, key)

    def _route(self, run: _Run, key: str) -> None:
        self.to_route.setdefault(run.run_id, []).append(run.specs[key])

    def _routed(self, message: TasksRouted) -> None:
        run = self.runs.get(message.run_id)
        if run is None:
            return
        for routed in message.routes:
            if run.book.states[routed.task_key] is not TaskState.QUEUED:
                continue
            if routed.adapter:
                run.book.enqueue(routed.task_key, routed.adapter)
            else:
                self._fail(run, routed.task_key, TaskState.FAILED, ErrorClass.BAD_INPUT, routed.reason, attempt=0)
        self._after_change(run)

    def _dispatch(self) -> None:
        for run in list(self.runs.values()):
            free = self.concurrency - sum(self.adapter_running.values())
            if free <= 0:
                return
            for choice in run.book.take_dispatchable(free, self.adapter_running, self.adapter_limits):
                attempt = run.attempts.get(choice.task_key, 0) + 1
                run.attempts[choice.task_key] = attempt
                run.running[choice.task_key] = choice.adapter
                self.adapter_running[choice.adapter] += 1
                spec = run.specs[choice.task_key]
                name = spec.id if attempt == 1 else f"{spec.id}.attempt{attempt}"
                log_path = run.log_dir / spec.workstream_id / f"{name}.log"
                try:
                    self.directory.tell(
                        executor_name(choice.adapter),
                        ExecuteTask(run.run_id, spec, attempt, str(log_path)),
                    )
                except PeerUnavailable as exc:
                    self._release(run, choice.task_key)
                    self._fail(run, choice.task_key, TaskState.FAILED, ErrorClass.CRASH, str(exc), attempt)
                    self._after_change(run)

    def _started(self, message: AttemptStarted) -> None:
        run = self.runs.get(message.run_id)
        if run is None:
            return
        self._transition(run, message.task_key, TaskState.IN_PROGRESS, "", message.attempt, message.adapter)
        self._ledger(message)
        self._event(run, "TASK_STARTED", message.task_key, {"attempt": message.attempt, "adapter": message.adapter, "pid": message.pid})
        self._refresh_workstreams(run)

    def _validating(self, message: TaskValidating) -> None:
        run = self.runs.get(message.run_id)
        if run is not None:
            self._transition(run, message.task_key, TaskState.VALIDATING, "tool succeeded", message.attempt)

    def _finished(self, message: AttemptFinished) -> None:
        run = self.runs.get(message.run_id)
        if run is None or run.running.get(message.task_key) is None:
            return
        key = message.task_key
        self._release(run, key)
        outcome = TaskState(message.status)
        self._ledger(message)
        if outcome is TaskState.COMPLETED:
            took = f"in {message.duration_s:.2f}s" if message.duration_s is not None else ""
            self._transition(run, key, TaskState.COMPLETED, took, message.attempt)
            self._event(run, "TASK_COMPLETED", key, {"attempt": message.attempt, "duration_s": message.duration_s})
            for dependant in run.book.ready_dependants(key):
                self._queue(run, dependant)
        else:
            policy = self._policy(run.specs[key])
            self._record_error(run, key, message.error_class, message.message, message.gate_output)
            if policy.should_retry(message.attempt, message.error_class):
                delay = policy.delay_s(message.attempt)
                self._transition(run, key, TaskState.RETRY_WAIT, f"{message.message}; retry in {delay:.2f}s", message.attempt)
                me = self.actor_ref
                self.timers.call_later(delay, lambda: me.tell(RetryDue(run.run_id, key)))
            else:
                self._fail(run, key, outcome, message.error_class, message.message, message.attempt, recorded=True)
        self._after_change(run)

    def _retry_due(self, message: RetryDue) -> None:
        run = self.runs.get(message.run_id)
        if run is not None and run.book.states.get(message.task_key) is TaskState.RETRY_WAIT:
            self._transition(run, message.task_key, TaskState.QUEUED, "retry backoff elapsed")
            self._route(run, message.task_key)

    def _policy(self, spec: TaskSpec) -> RetryPolicy:
        defaults = self.retry_defaults
        return RetryPolicy(
            max_attempts=max(spec.max_attempts, 1),
            base_delay_s=defaults.base_delay_s,
            factor=defaults.factor,
            max_delay_s=defaults.max_delay_s,
            jitter=defaults.jitter,
        )

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
        self._transition(run, key, state, message, attempt)
        self._event(run, "TASK_FAILED", key, {"attempt": attempt, "state": state.value, "error_class": error_class, "message": message})
        for dependant in run.book.blocked_by(key):
            run.book.forget_queued(dependant)
            self._transition(run, dependant, TaskState.BLOCKED, f"dependency {key} ended {state.value}")

    def _release(self, run: _Run, key: str) -> None:
        adapter = run.running.pop(key, None)
        if adapter is not None:
            self.adapter_running[adapter] -= 1

    def _after_change(self, run: _Run) -> None:
        self._refresh_workstreams(run)
        self._check_finished(run)
        self._dispatch()

    def _check_finished(self, run: _Run) -> None:
        if run.running or not run.book.is_finished():
            return
        outcome = run.book.run_outcome()
        at = utc_now_iso()
        counts = run.book.counts()
        summary = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
        self._ledger(TransitionRun(run.run_id, outcome.value, at, summary))
        self._event(run, "EXECUTION_FINISHED", None, {"state": outcome.value, "tasks": counts})
        del self.runs[run.run_id]
        total = len(run.book.states)
        self.progress(RunProgress(run.run_id, "", outcome.value, at, total, total, finished_run_state=outcome.value))

    # -- writing -------------------------------------------------------------------------------
    def _transition(
        self, run: _Run, key: str, state: TaskState, reason: str = "", attempt: int = 0, adapter: str = ""
    ) -> None:
        previous = run.book.set_state(key, state)
        if previous is state:
            return
        at = utc_now_iso()
        self._ledger(TransitionTask(run.run_id, key, state.value, at, attempt, reason, adapter))
        if state in TERMINAL_TASK_STATES or state is TaskState.IN_PROGRESS or state is TaskState.RETRY_WAIT:
            self.progress(
                RunProgress(run.run_id, key, state.value, at, run.book.done_count(), len(run.book.states), reason)
            )

    def _refresh_workstreams(self, run: _Run) -> None:
        """Move each workstream whose tasks changed to the state they imply, by legal steps."""
        for ws_id in run.book.take_dirty_workstreams():
            target = run.book.workstream_target(ws_id)
            for step in workstream_path(run.ws_states[ws_id], target):
                self._ledger(TransitionWorkstream(run.run_id, ws_id, step.value, utc_now_iso()))
                run.ws_states[ws_id] = step

    def _record_error(self, run: _Run, key: str, error_class: str, message: str, gate_output: str) -> None:
        spec = run.specs[key]
        self._ledger(
            ErrorObserved(
                run_id=run.run_id,
                ws_id=spec.workstream_id,
                step_name=key,
                error_code=error_class,
                signature=error_signature(error_class, message),
                message=message,
                at=utc_now_iso(),
                context_json=json.dumps({"gate_output": gate_output[-2000:]}) if gate_output else "",
            )
        )

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
