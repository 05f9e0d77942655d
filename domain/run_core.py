"""The run core: every decision about the runs of one runtime, as a state machine.

:meth:`RunCore.handle` takes an event (see :mod:`domain.run_events`) and returns the effects
the Scheduler carries out; control commands (:meth:`RunCore.pause`, ``cancel``, ``retry`` …)
return a result and their effects the same way. The core owns every task's state, the dispatch
queue, retries, blocking, quarantine, safe mode, the circuit breakers and the worktree lanes,
and it holds no thread, clock or I/O: ``now`` (monotonic seconds) and ``at`` (ISO-8601 UTC)
come with every call.

Where to look:

- a task's state changes only in :meth:`RunCore._move` (checked by :mod:`domain.states`);
- a retry is decided in :meth:`RunCore._attempt_ended` with :mod:`domain.retry`;
- what an attempt's end means (state, error class, breaker evidence) is :mod:`domain.outcomes`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from domain.breaker import BreakerChange, CircuitBreaker, CircuitState
from domain.cache import CACHE_ADAPTER, CacheHit, cache_basis
from domain.errors import ErrorClass, error_signature
from domain.graph import task_dependencies, topological_order
from domain.outcomes import Evidence, Verdict
from domain.plan import INTEGRATION_TOOL, TaskSpec, Workstream
from domain.results import ResultRef
from domain.retry import RetryPolicy
from domain.routing import INTEGRATOR, AdapterInfo
from domain.run_events import (
    Announced,
    ApprovalRelayed,
    AttemptBegan,
    AttemptClosed,
    AttemptEnded,
    AttemptOpened,
    AttemptReused,
    BreakerDue,
    CancelRequested,
    CaptureWanted,
    ChangesRecorded,
    Dispatched,
    DispatchRefused,
    Effect,
    ErrorCounted,
    Event,
    ExecutorDown,
    ExecutorUp,
    IntegrationEnded,
    IntegrationWanted,
    LedgerHold,
    Noted,
    Phase,
    PhaseBegan,
    ProcessKill,
    ReportAccepted,
    RetryDue,
    Routed,
    RouteRequested,
    RunMoved,
    RunOpened,
    TaskMoved,
    Tick,
    TimerSet,
    WorkstreamMoved,
    WorktreeReady,
    WorktreeWanted,
)
from domain.scheduling import ALLOWED_FAILURE_STATES, RunBook, workstream_path
from domain.states import (
    ACTIVE_TASK_STATES,
    FAILURE_ALLOWED,
    TERMINAL_TASK_STATES,
    UNSUCCESSFUL_TASK_STATES,
    RunState,
    TaskState,
    WorkstreamState,
)

# What a task that took an input from a task that left no result gets: null.
NO_RESULT = ResultRef()
# A workstream in one of these is checking its work; a task of it queued again (a retry, an
# interrupted check) takes it back to editing, not to ready.
_CHECKING = frozenset({WorkstreamState.STATIC_CHECK, WorkstreamState.RUNTIME_CHECK, WorkstreamState.FIXING})


class ControlRefused(Exception):
    """A control request that cannot be done in the current state; the message says why."""


class RunNotActive(ControlRefused):
    """The run named is not being driven by this runtime (finished, or never started here)."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """``quarantine_after``: failures with one signature in one run before it is quarantined.
    ``safe_mode_after_s``: how long a run's queued work may find every adapter it needs open
    before the run stops (safe mode). ``waiting_every_s``: how often a stall is announced."""

    concurrency: int
    adapters: tuple[AdapterInfo, ...]
    quarantine_after: int = 10
    safe_mode_after_s: float = 120.0
    waiting_every_s: float = 5.0


@dataclass(slots=True)
class _Running:
    adapter: str
    attempt: int
    began: float  # monotonic, when it was dispatched
    pid: int | None = None
    create_time: float | None = None
    started: bool = False  # the executor reported the start


@dataclass(slots=True)
class _Lane:
    """A worktree workstream: one task at a time in its own worktree, merged at the end."""

    workstream: Workstream
    path: str = ""  # the worktree, once the Workspace made it
    preparing: bool = False
    parked: list[str] = field(default_factory=list)  # tasks waiting for the worktree or their turn
    holder: str = ""  # the task using the worktree now


@dataclass(slots=True)
class _Run:
    run_id: str
    book: RunBook
    specs: dict[str, TaskSpec]
    log_dir: str
    attempts: Counter[str]
    failures: Counter[str]
    ws_states: dict[str, WorkstreamState]
    lanes: dict[str, _Lane]
    running: dict[str, _Running] = field(default_factory=dict)
    signatures: Counter[str] = field(default_factory=Counter)
    paused: bool = False
    cancelling: bool = False
    stop_reason: str = ""  # quarantine or safe mode: nothing more starts, the run ends
    stop_state: RunState | None = None
    awaiting: dict[str, str] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)
    capturing: dict[str, AttemptEnded] = field(default_factory=dict)
    integrating: set[str] = field(default_factory=set)
    stalled_since: float | None = None
    stall_said_at: float | None = None
    # Results of completed tasks some task takes as input; cache keys of completed tasks;
    # definition digests of cacheable tasks; tasks to complete from an earlier run's result.
    results: dict[str, ResultRef] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    definitions: dict[str, str] = field(default_factory=dict)
    cached: dict[str, CacheHit] = field(default_factory=dict)
    consumed: frozenset[str] = frozenset()


class RunCore:
    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.adapters = {info.name: info for info in config.adapters}
        self.breakers = {info.name: CircuitBreaker(info.name, info.breaker) for info in config.adapters}
        self.runs: dict[str, _Run] = {}
        self.adapter_running: Counter[str] = Counter()
        self.down: set[str] = set()  # adapters whose executor is dead and not yet replaced
        self.paused_all = False
        self.draining = False
        self.ledger_holding = False
        self._to_route: dict[str, list[TaskSpec]] = {}
        self._out: list[Effect] = []
        self.now = 0.0
        self.at = ""

    # -- entry points --------------------------------------------------------------------------
    def handle(self, event: Event, now: float, at: str) -> list[Effect]:
        """Apply ``event``; return the effects to carry out, in order."""
        self._begin(now, at)
        match event:
            case RunOpened():
                self._open(event)
            case Routed():
                self._routed(event)
            case AttemptBegan():
                self._began(event)
            case PhaseBegan():
                self._phase(event)
            case AttemptEnded():
                self._attempt_ended(event)
            case ChangesRecorded():
                self._changes_recorded(event)
            case WorktreeReady():
                self._worktree_ready(event)
            case IntegrationEnded():
                self._integration_ended(event)
            case RetryDue():
                self._retry_due(event)
            case BreakerDue():
                self._breaker_due(event)
            case Tick():
                self._tick()
            case ExecutorDown():
                self._executor_down(event)
            case ExecutorUp():
                self.down.discard(event.adapter)
                self._dispatch()
            case DispatchRefused():
                self._dispatch_refused(event)
            case LedgerHold():
                self.ledger_holding = event.holding
                self._dispatch()
        return self._end()

    def _begin(self, now: float, at: str) -> None:
        self.now, self.at = now, at
        self._out = []

    def _end(self) -> list[Effect]:
        for run_id, tasks in self._to_route.items():
            if run_id in self.runs:
                self._out.append(RouteRequested(run_id, tuple(tasks), self.open_circuits(), self._load()))
        self._to_route.clear()
        out, self._out = self._out, []
        return out

    def open_circuits(self) -> frozenset[str]:
        return frozenset(name for name, b in self.breakers.items() if b.state is CircuitState.OPEN)

    def _load(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted((name, n) for name, n in self.adapter_running.items() if n))

    # -- opening a run ---------------------------------------------------------------------------
    def _open(self, event: RunOpened) -> None:
        if event.run_id in self.runs:
            return
        plan = event.plan
        deps = task_dependencies(plan)
        order = topological_order(deps)
        specs = {task.key: task for task in plan.tasks}
        run = _Run(
            run_id=event.run_id,
            book=RunBook(
                deps={key: deps[key] for key in order},
                priorities={key: specs[key].priority for key in order},
                workstream_of={key: specs[key].workstream_id for key in order},
                states=dict(event.task_states),
                allowed_failures=[key for key in order if specs[key].allow_failure],
            ),
            specs=specs,
            log_dir=event.log_dir,
            attempts=Counter(event.attempts),
            failures=Counter(event.failures),
            ws_states={ws.id: WorkstreamState.PENDING for ws in plan.workstreams} | dict(event.ws_states),
            lanes={ws.id: _Lane(ws) for ws in plan.workstreams if ws.isolation == "worktree" and ws.repo},
            results=dict(event.results),
            keys=dict(event.keys),
            definitions=dict(event.definitions),
            cached=dict(event.cached),
            consumed=frozenset(upstream for task in plan.tasks for _, upstream in task.inputs),
        )
        self.runs[run.run_id] = run
        self._out.append(RunMoved(run.run_id, RunState.RUNNING, "execution started", run.book.done_count(),
                                  len(run.book.states), finished=False))
        for key, attempt in event.interrupted:
            self._out.append(AttemptClosed(run.run_id, key, attempt, Verdict(
                TaskState.FAILED, ErrorClass.INTERRUPTED, "interrupted: the runtime running this attempt stopped")))
        states = run.book.states
        unsuccessful = {k for k, s in states.items() if s in UNSUCCESSFUL_TASK_STATES}
        to_reset = unsuccessful if event.reset is None else retry_closure(run.book, event.reset)
        for key, state in list(states.items()):
            if key in to_reset and state in UNSUCCESSFUL_TASK_STATES:
                run.failures[key] = 0
                self._move(run, key, TaskState.PENDING, "resumed: tried again")
            elif state in ACTIVE_TASK_STATES or state is TaskState.RETRY_WAIT:
                self._move(run, key, TaskState.QUEUED, "resumed: attempt was interrupted")
        for key, state in list(states.items()):
            if state is TaskState.QUEUED:
                self._route(run, key)
        for key in run.book.ready_pending():
            self._queue(run, key)
        self._after_change(run)

    # -- queueing and routing --------------------------------------------------------------------
    def _queue(self, run: _Run, key: str) -> None:
        # A worklist, not recursion: a long chain of reused results must not exhaust the stack.
        waiting = [key]
        while waiting:
            key = waiting.pop()
            self._move(run, key, TaskState.QUEUED, "dependencies completed")
            if key in run.cached:
                waiting += self._reuse(run, key)
            else:
                self._route(run, key)

    def _reuse(self, run: _Run, key: str) -> list[str]:
        """Complete ``key`` with the result of the earlier attempt that had its cache key; the
        dependants it made ready."""
        hit = run.cached.pop(key)
        run.attempts[key] += 1
        attempt = run.attempts[key]
        run.keys[key] = hit.cache_key
        if key in run.consumed:
            run.results[key] = hit.result
        self._out.append(AttemptReused(run.run_id, run.specs[key].workstream_id, key, attempt, hit))
        self._move(run, key, TaskState.COMPLETED, f"cached (result of {hit.source})", attempt, CACHE_ADAPTER)
        self._note(run, "TASK_CACHED", key, {"attempt": attempt, "source": hit.source, "cache_key": hit.cache_key})
        return run.book.ready_dependants(key)

    def _route(self, run: _Run, key: str) -> None:
        spec = run.specs[key]
        lane = run.lanes.get(spec.workstream_id)
        if lane is not None and not lane.path:
            lane.parked.append(key)
            self._prepare(run, lane)
            return
        if spec.tool == INTEGRATION_TOOL:
            self._integrate(run, key)
            return
        self._to_route.setdefault(run.run_id, []).append(spec)

    def _routed(self, event: Routed) -> None:
        run = self.runs.get(event.run_id)
        if run is None:
            return
        for route in event.routes:
            key = route.task_key
            # A late answer (the task was routed again meanwhile) must not start it twice.
            if run.book.states.get(key) is not TaskState.QUEUED or run.book.is_enqueued(key) or key in run.running:
                continue
            if route.adapter:
                self._enqueue(run, key, route.adapter)
            else:
                self._fail(run, key, Verdict(TaskState.FAILED, ErrorClass.BAD_INPUT, route.reason), attempt=0)
        self._after_change(run)

    def _enqueue(self, run: _Run, key: str, adapter: str) -> None:
        """Queue a routed task; a worktree workstream runs one task at a time."""
        lane = run.lanes.get(run.specs[key].workstream_id)
        if lane is not None:
            if lane.holder and lane.holder != key:
                if key not in lane.parked:
                    lane.parked.append(key)
                return
            lane.holder = key
        run.book.enqueue(key, adapter)

    # -- dispatch --------------------------------------------------------------------------------
    def _limits(self) -> dict[str, int]:
        """Each adapter's limit now: its own, 0 while its circuit is open or its executor is
        down, and one probe at a time while half-open."""
        limits: dict[str, int] = {}
        for name, info in self.adapters.items():
            if name in self.down:
                limits[name] = 0
                continue
            breaker = self.breakers[name]
            if breaker.state is CircuitState.CLOSED:
                if info.concurrency is not None:
                    limits[name] = info.concurrency
            else:
                limits[name] = self.adapter_running[name] + breaker.capacity()
        return limits

    def _dispatch(self) -> None:
        if self.paused_all or self.ledger_holding:
            return
        for run in list(self.runs.values()):
            if run.paused or run.cancelling or run.stop_reason:
                continue
            free = self.config.concurrency - sum(self.adapter_running.values())
            if free <= 0:
                return
            for choice in run.book.take_dispatchable(free, self.adapter_running, self._limits()):
                self._start_attempt(run, choice.task_key, choice.adapter)

    def _start_attempt(self, run: _Run, key: str, adapter: str) -> None:
        run.attempts[key] += 1
        attempt = run.attempts[key]
        run.running[key] = _Running(adapter, attempt, self.now)
        self.adapter_running[adapter] += 1
        self.breakers[adapter].started()
        spec = self._in_worktree(run, run.specs[key])
        name = spec.id if attempt == 1 else f"{spec.id}.attempt{attempt}"
        log_path = os.path.join(run.log_dir, spec.workstream_id, f"{name}.log")
        inputs = tuple((name, run.results.get(up, NO_RESULT)) for name, up in spec.inputs) if spec.inputs else ()
        definition = run.definitions.get(key)
        basis = cache_basis(definition, [run.keys.get(dep, "") for dep in run.book.deps[key]]) if definition else ""
        self._out.append(Dispatched(run.run_id, spec, attempt, adapter, log_path, inputs, basis))

    def _dispatch_refused(self, event: DispatchRefused) -> None:
        """The executor is between death and restart: the task waits for it, unharmed."""
        run = self.runs.get(event.run_id)
        running = run.running.get(event.task_key) if run else None
        if run is None or running is None or running.attempt != event.attempt:
            return
        self._release(run, event.task_key)
        self.breakers[event.adapter].released()
        run.attempts[event.task_key] -= 1
        self.down.add(event.adapter)
        if run.cancelling:
            self._fail(run, event.task_key, Verdict(TaskState.CANCELLED, ErrorClass.CANCELLED, "cancelled by request"), 0)
        elif run.stop_reason:
            self._block(run, event.task_key, run.stop_reason)
        else:
            run.book.enqueue(event.task_key, event.adapter)
            return
        self._after_change(run)  # a cancelled or stopped run would otherwise never finish

    def _release(self, run: _Run, key: str) -> _Running | None:
        running = run.running.pop(key, None)
        if running is not None and running.adapter != INTEGRATOR:
            self.adapter_running[running.adapter] -= 1
        return running

    # -- a running attempt -----------------------------------------------------------------------
    def _current(self, run_id: str, key: str, attempt: int) -> tuple[_Run, _Running] | None:
        run = self.runs.get(run_id)
        running = run.running.get(key) if run else None
        if run is None or running is None or running.attempt != attempt:
            return None
        return run, running

    def _began(self, event: AttemptBegan) -> None:
        found = self._current(event.run_id, event.task_key, event.attempt)
        if found is None:
            return
        run, running = found
        running.pid, running.create_time, running.started = event.pid, event.create_time, True
        self._move(run, event.task_key, TaskState.IN_PROGRESS, "", event.attempt, running.adapter)
        self._out.append(ReportAccepted(event.report))
        self._note(run, "TASK_STARTED", event.task_key,
                   {"attempt": event.attempt, "adapter": running.adapter, "pid": event.pid})

    def _phase(self, event: PhaseBegan) -> None:
        found = self._current(event.run_id, event.task_key, event.attempt)
        if found is None:
            return
        run, _ = found
        key = event.task_key
        run.phases[key] = event.phase
        if event.phase is Phase.AWAITING:
            run.awaiting[key] = event.detail
            self._move(run, key, TaskState.AWAITING_APPROVAL, event.detail, event.attempt)
            self._note(run, "APPROVAL_REQUESTED", key, {"attempt": event.attempt, "prompt": event.detail})
        elif event.phase is Phase.FIXING:
            self._note(run, "FIX_ROUND", key, {"attempt": event.attempt, "round": event.round, "reason": event.detail})
            self._announce(run, key, "FIXING", f"round {event.round}: {event.detail}")
            run.book.dirty_workstreams.add(run.specs[key].workstream_id)
        else:
            self._move(run, key, TaskState.VALIDATING, f"{event.phase.value} checks", event.attempt)
        self._refresh_workstreams(run)

    def _attempt_ended(self, event: AttemptEnded) -> None:
        found = self._current(event.run_id, event.task_key, event.attempt)
        if found is None:
            return
        run, running = found
        key = event.task_key
        lane = run.lanes.get(run.specs[key].workstream_id)
        if lane is not None and lane.path and key not in run.capturing:
            # What the attempt changed is recorded (and committed, if it succeeded) before
            # anything else happens, so the next task of the workstream starts clean.
            run.capturing[key] = event
            self._out.append(CaptureWanted(run.run_id, lane.workstream.id, key, event.attempt,
                                           keep=event.verdict.state is TaskState.COMPLETED))
            return
        self._close_attempt(run, key)
        verdict = event.verdict
        if verdict.state is TaskState.COMPLETED:
            if key in run.consumed:
                run.results[key] = event.result or NO_RESULT
            if event.cache_key:
                run.keys[key] = event.cache_key
        self._out.append(ReportAccepted(event.report))
        self._breaker_saw(running.adapter, verdict, run)
        self._conclude(run, key, event.attempt, verdict, event.duration_s, event.gate_output)
        self._after_change(run)

    def _close_attempt(self, run: _Run, key: str) -> None:
        """Forget everything about ``key``'s running attempt and free its slot and worktree."""
        run.capturing.pop(key, None)
        run.phases.pop(key, None)
        run.awaiting.pop(key, None)
        self._free_lane(run, key)
        self._release(run, key)

    def _conclude(self, run: _Run, key: str, attempt: int, verdict: Verdict, duration_s: float | None,
                  gate_output: str = "") -> None:
        """What follows an attempt's end: completion, a retry, a requeue or a failure."""
        if verdict.state is TaskState.COMPLETED:
            took = f"in {duration_s:.2f}s" if duration_s is not None else ""
            said = f"{verdict.message} {took}" if verdict.message and run.specs[key].tool == INTEGRATION_TOOL else took
            self._move(run, key, TaskState.COMPLETED, said.strip(), attempt)
            self._note(run, "TASK_COMPLETED", key, {"attempt": attempt, "duration_s": duration_s})
            for dependant in run.book.ready_dependants(key):
                self._queue(run, dependant)
            return
        if verdict.state is TaskState.CANCELLED or run.cancelling:
            cancelled = Verdict(TaskState.CANCELLED, ErrorClass.CANCELLED, verdict.message or "cancelled")
            self._fail(run, key, cancelled, attempt, counted=True)
            return
        error_class = verdict.error_class or ErrorClass.TOOL_ERROR
        signature = self._count_error(run, key, error_class, verdict.message, gate_output)
        if error_class is ErrorClass.INTERRUPTED:
            self._move(run, key, TaskState.QUEUED, verdict.message)
            self._route(run, key)
            return
        run.failures[key] += 1
        self._count_signature(run, signature, verdict.message)
        policy = RetryPolicy.for_task(run.specs[key])
        if policy.should_retry(run.failures[key], error_class) and not run.stop_reason:
            delay = policy.delay_s(run.failures[key])
            self._move(run, key, TaskState.RETRY_WAIT, f"{verdict.message}; retry in {delay:.2f}s", attempt)
            self._out.append(TimerSet(delay, RetryDue(run.run_id, key)))
            return
        self._fail(run, key, verdict, attempt, counted=True)

    def _retry_due(self, event: RetryDue) -> None:
        run = self.runs.get(event.run_id)
        # A stop or a cancel has already moved a waiting task on, so this finds it no longer waiting.
        if run is None or run.book.states.get(event.task_key) is not TaskState.RETRY_WAIT:
            return
        self._move(run, event.task_key, TaskState.QUEUED, "retry backoff elapsed")
        self._route(run, event.task_key)
        self._after_change(run)

    def _executor_down(self, event: ExecutorDown) -> None:
        """An executor died or hung: its attempts crashed (retried per policy, counted by the
        breaker), and their processes are killed."""
        self.down.add(event.adapter)
        for run in list(self.runs.values()):
            for key, running in list(run.running.items()):
                if running.adapter != event.adapter:
                    continue
                if running.pid is not None and running.create_time is not None:
                    self._out.append(ProcessKill(running.pid, running.create_time))
                if not running.started:
                    # It died on this very task, before it could report a start: the attempt
                    # still gets its row, so every attempt is accounted for.
                    self._out.append(AttemptOpened(run.run_id, run.specs[key].workstream_id, key,
                                                   running.attempt, running.adapter))
                verdict = Verdict(TaskState.FAILED, ErrorClass.CRASH, f"executor {event.adapter} crashed: {event.error}")
                self._out.append(AttemptClosed(run.run_id, key, running.attempt, verdict, self.now - running.began))
                self._close_attempt(run, key)
                self._breaker_saw(running.adapter, verdict, run)
                self._conclude(run, key, running.attempt, verdict, None)
                self._after_change(run)

    # -- failure, blocking, quarantine -------------------------------------------------------------
    def _fail(self, run: _Run, key: str, verdict: Verdict, attempt: int, counted: bool = False) -> None:
        """``key`` ends unsuccessfully; everything downstream that has not run is BLOCKED —
        unless it is a failure ``key`` is allowed (``allow_failure``): then its dependants go on."""
        error_class = verdict.error_class or ErrorClass.TOOL_ERROR
        # A cancellation is a person's decision, not an error: never counted, however it came.
        if not counted and verdict.state is not TaskState.CANCELLED:
            self._count_error(run, key, error_class, verdict.message, "")
        run.book.forget_queued(key)
        allowed = key in run.book.allowed_failures and verdict.state in ALLOWED_FAILURE_STATES
        reason = f"{FAILURE_ALLOWED} {verdict.message}" if allowed else verdict.message
        self._move(run, key, verdict.state, reason, attempt)
        self._note(run, "TASK_FAILED", key, {"attempt": attempt, "state": verdict.state.value,
                                             "error_class": error_class.value, "message": verdict.message,
                                             **({"allowed": True} if allowed else {})})
        if allowed:
            for dependant in run.book.ready_dependants(key):
                self._queue(run, dependant)
            return
        for dependant in run.book.blocked_by(key):
            self._block(run, dependant, f"dependency {key} ended {verdict.state.value}")

    def _block(self, run: _Run, key: str, reason: str) -> None:
        run.book.forget_queued(key)
        lane = run.lanes.get(run.specs[key].workstream_id)
        if lane is not None and key in lane.parked:
            lane.parked.remove(key)
        self._move(run, key, TaskState.BLOCKED, reason)

    def _count_error(self, run: _Run, key: str, error_class: ErrorClass, message: str, gate_output: str) -> str:
        signature = error_signature(error_class.value, message)
        self._out.append(ErrorCounted(run.run_id, run.specs[key].workstream_id, key, error_class, signature,
                                      message, gate_output))
        return signature

    def _count_signature(self, run: _Run, signature: str, message: str) -> None:
        run.signatures[signature] += 1
        count = run.signatures[signature]
        if count > self.config.quarantine_after and not run.stop_reason:
            run.stop_reason = (f"quarantined: {count} failures with signature {signature} "
                               f"(threshold {self.config.quarantine_after}); last: {message}")
            run.stop_state = RunState.QUARANTINED
            self._note(run, "RUN_QUARANTINED", None, {"signature": signature, "count": count,
                                                       "reason": run.stop_reason})
            self._stop_waiting_work(run)

    def _stop_waiting_work(self, run: _Run) -> None:
        """A stopped run starts nothing more: what waits for a slot, a retry or a worktree is
        BLOCKED with the run's reason, so a resume (or ``retry``) picks it up again."""
        for key, state in list(run.book.states.items()):
            if state in (TaskState.PENDING, TaskState.QUEUED, TaskState.RETRY_WAIT) and key not in run.running:
                self._block(run, key, run.stop_reason)

    # -- finishing ---------------------------------------------------------------------------------
    def _after_change(self, run: _Run) -> None:
        self._refresh_workstreams(run)
        self._check_finished(run)
        self._dispatch()

    def _check_finished(self, run: _Run) -> None:
        if run.run_id not in self.runs or run.running or run.integrating or run.capturing:
            return
        if any(lane.preparing for lane in run.lanes.values()):
            return
        if not run.book.is_finished():
            return
        outcome = run.stop_state or run.book.run_outcome()
        shown = Counter(run.book.counts())
        for key in run.book.allowed_failures:
            if run.book.failed_allowed(key):
                state = run.book.states[key].value
                shown[state] -= 1
                shown[f"{state} {FAILURE_ALLOWED}"] += 1
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(shown.items()) if n)
        reason = f"{run.stop_reason}; {counts}" if run.stop_reason else counts
        self._note(run, "EXECUTION_FINISHED", None, {"state": outcome.value, "tasks": run.book.counts()})
        del self.runs[run.run_id]
        self._out.append(RunMoved(run.run_id, outcome, reason, run.book.done_count(), len(run.book.states),
                                  finished=True))

    # -- circuit breakers --------------------------------------------------------------------------
    def _breaker_saw(self, adapter: str, verdict: Verdict, run: _Run | None) -> None:
        breaker = self.breakers.get(adapter)
        if breaker is None:
            return
        evidence = verdict.evidence
        if evidence is Evidence.WORKED:
            change = breaker.succeeded()
        elif evidence is Evidence.BROKEN:
            change = breaker.failed(self.now, verdict.message)
        else:
            change = breaker.released()
        if change is not None:
            self._breaker_changed(change, run)

    def _breaker_due(self, event: BreakerDue) -> None:
        change = self.breakers[event.adapter].due(self.now)
        if change is not None:
            self._breaker_changed(change, None)
            self._dispatch()

    def _breaker_changed(self, change: BreakerChange, run: _Run | None) -> None:
        payload = {"adapter": change.adapter, "state": change.state.value, "reason": change.reason}
        self._out.append(Noted(run.run_id if run else None, f"CIRCUIT_{change.state.name}", None, payload))
        if change.retry_at is not None:
            self._out.append(TimerSet(max(0.0, change.retry_at - self.now), BreakerDue(change.adapter)))
        if change.state is not CircuitState.OPEN:
            return
        # Tasks queued for this adapter are routed again: a fallback may take them now.
        for each in self.runs.values():
            for key in each.book.queued_for(change.adapter):
                each.book.forget_queued(key)
                self._free_lane(each, key)
                self._to_route.setdefault(each.run_id, []).append(each.specs[key])

    # -- noticing that nothing can move -----------------------------------------------------------
    def _tick(self) -> None:
        for run in list(self.runs.values()):
            blocked_on = self._stalled_on(run)
            if not blocked_on:
                run.stalled_since = run.stall_said_at = None
                continue
            if run.stalled_since is None:
                run.stalled_since = self.now
            waited = self.now - run.stalled_since
            if waited >= self.config.safe_mode_after_s:
                self._safe_mode(run, blocked_on, waited)
                continue
            if run.stall_said_at is None or self.now - run.stall_said_at >= self.config.waiting_every_s:
                run.stall_said_at = self.now
                self._announce(run, "", "WAITING", self.stall_reason(blocked_on))

    def _stalled_on(self, run: _Run) -> list[str]:
        """The adapters queued work waits for when none of them can take anything (circuit
        open, executor down) and nothing of the run is running; empty when work can move."""
        if run.running or run.paused or self.paused_all or run.cancelling or run.stop_reason:
            return []
        wanted = set(run.book.queued_adapters())
        if not wanted:
            return []
        unavailable = {name for name in wanted
                       if name in self.down or self.breakers[name].state is CircuitState.OPEN}
        return sorted(wanted) if unavailable == wanted else []

    def stall_reason(self, adapters: Iterable[str]) -> str:
        parts = []
        for name in adapters:
            breaker = self.breakers[name]
            if name in self.down:
                parts.append(f"executor {name!r} is down")
            elif breaker.retry_at is not None:
                parts.append(f"circuit {name!r} open, next probe in {max(0.0, breaker.retry_at - self.now):.0f}s")
            else:
                parts.append(f"circuit {name!r} open")
        return "waiting: " + "; ".join(parts)

    def _safe_mode(self, run: _Run, adapters: list[str], waited: float) -> None:
        names = ", ".join(repr(a) for a in adapters)
        run.stop_reason = (f"safe mode: every adapter this run needs ({names}) has been unavailable for "
                           f"{waited:.0f}s; resume with `orchestrate execute --run {run.run_id}` once it is back")
        run.stop_state = RunState.PARTIAL
        self._note(run, "RUN_SAFE_MODE", None, {"adapters": adapters, "waited_s": round(waited, 1),
                                                 "reason": run.stop_reason})
        self._stop_waiting_work(run)
        self._after_change(run)

    # -- worktree lanes ----------------------------------------------------------------------------
    def _prepare(self, run: _Run, lane: _Lane) -> None:
        if not lane.preparing:
            lane.preparing = True
            self._out.append(WorktreeWanted(run.run_id, lane.workstream.id, lane.workstream.repo or ""))

    def _worktree_ready(self, event: WorktreeReady) -> None:
        run = self.runs.get(event.run_id)
        lane = run.lanes.get(event.ws_id) if run else None
        if run is None or lane is None:
            return
        lane.preparing = False
        parked, lane.parked = lane.parked, []
        if event.error:
            for key in parked:
                if run.book.states[key] is TaskState.QUEUED:
                    self._fail(run, key, Verdict(TaskState.FAILED, ErrorClass.BAD_INPUT,
                                                 f"worktree for {event.ws_id}: {event.error}"), 0)
        else:
            lane.path = event.path
            for key in parked:
                if run.book.states[key] is TaskState.QUEUED:
                    self._route(run, key)
        self._after_change(run)

    def _free_lane(self, run: _Run, key: str) -> None:
        lane = run.lanes.get(run.specs[key].workstream_id)
        if lane is None or lane.holder != key:
            return
        lane.holder = ""
        while lane.parked:
            waiting = lane.parked.pop(0)
            if run.book.states[waiting] is TaskState.QUEUED:
                self._route(run, waiting)
                return

    def _in_worktree(self, run: _Run, spec: TaskSpec) -> TaskSpec:
        """The task with its cwd moved into its workstream's worktree."""
        lane = run.lanes.get(spec.workstream_id)
        repo = lane.workstream.repo if lane is not None and lane.path else None
        if lane is None or not repo:
            return spec
        cwd = os.path.realpath(spec.cwd or repo)
        root = os.path.realpath(repo)
        inside = os.path.commonpath([cwd, root]) == root
        moved = os.path.join(lane.path, os.path.relpath(cwd, root)) if inside else lane.path
        return replace(spec, cwd=os.path.normpath(moved))

    def _changes_recorded(self, event: ChangesRecorded) -> None:
        run = self.runs.get(event.run_id)
        ended = run.capturing.get(event.task_key) if run else None
        if run is None or ended is None or ended.attempt != event.attempt:
            return
        if event.error:
            self._note(run, "PATCH_CAPTURE_FAILED", event.task_key, {"error": event.error})
        self._attempt_ended(ended)

    def _integrate(self, run: _Run, key: str) -> None:
        """A workstream's merge step: all its tasks completed, its branch goes to its target."""
        lane = run.lanes[run.specs[key].workstream_id]
        run.attempts[key] += 1
        attempt = run.attempts[key]
        run.running[key] = _Running(INTEGRATOR, attempt, self.now, started=True)
        run.integrating.add(lane.workstream.id)
        self._out.append(AttemptOpened(run.run_id, lane.workstream.id, key, attempt, INTEGRATOR))
        self._move(run, key, TaskState.IN_PROGRESS, "", attempt, INTEGRATOR)
        self._out.append(IntegrationWanted(run.run_id, lane.workstream.id, lane.workstream.target_branch,
                                           lane.workstream.merge))

    def _integration_ended(self, event: IntegrationEnded) -> None:
        run = self.runs.get(event.run_id)
        lane = run.lanes.get(event.ws_id) if run else None
        if run is None or lane is None or event.ws_id not in run.integrating:
            return
        run.integrating.discard(event.ws_id)
        lane.path = ""  # the Workspace removed the worktree; a retry makes it again
        key = next(k for k, r in run.running.items() if run.specs[k].workstream_id == event.ws_id)
        running = self._release(run, key)
        assert running is not None
        payload = {"workstream": event.ws_id, "branch": event.branch, "target": event.target,
                   "commit": event.commit, "conflicts": list(event.conflicts), "error": event.error}
        if event.merged:
            verdict = Verdict(TaskState.COMPLETED, None,
                              f"merged {event.branch} into {event.target} ({event.commit[:10]})")
            self._note(run, "WORKSTREAM_MERGED", None, payload)
        elif event.conflicts or event.error:
            why = (f"merge into {event.target} conflicts in {', '.join(event.conflicts)}; branch {event.branch} "
                   "left for review" if event.conflicts else
                   f"{event.error.rstrip('.')}; once that is fixed, `orchestrate execute --run {run.run_id}` merges it")
            verdict = Verdict(TaskState.FAILED, ErrorClass.MERGE, why)
            self._note(run, "MERGE_CONFLICT" if event.conflicts else "MERGE_FAILED", None, payload)
        else:
            verdict = Verdict(TaskState.COMPLETED, None, f"{event.branch} left for review")
            self._note(run, "BRANCH_LEFT", None, payload)
        took = self.now - running.began
        self._out.append(AttemptClosed(run.run_id, key, running.attempt, verdict, took))
        self._conclude(run, key, running.attempt, verdict, took)
        self._after_change(run)

    # -- workstream states -------------------------------------------------------------------------
    def _refresh_workstreams(self, run: _Run) -> None:
        """Move each workstream whose tasks changed to the state they imply, by legal steps;
        one running acceptance checks shows their phase (static_check, runtime_check, fixing)."""
        for ws_id in run.book.take_dirty_workstreams():
            target = run.book.workstream_target(ws_id)
            if target is WorkstreamState.READY and run.ws_states[ws_id] in _CHECKING:
                target = WorkstreamState.EDITING  # a task queued again (a retry): still at work
            if target is WorkstreamState.EDITING:
                target = self._phase_state(run, ws_id)
            path = workstream_path(run.ws_states[ws_id], target)
            if WorkstreamState.FAILED in path[:-1]:
                # The only legal way back is through failed (a task of a workstream at work was
                # queued again: a retry, an interrupted check): it has not failed, so it stays.
                continue
            for step in path:
                self._out.append(WorkstreamMoved(run.run_id, ws_id, step))
                run.ws_states[ws_id] = step

    def _phase_state(self, run: _Run, ws_id: str) -> WorkstreamState:
        phases = {phase for key, phase in run.phases.items() if run.specs[key].workstream_id == ws_id}
        if Phase.FIXING in phases:
            return WorkstreamState.FIXING
        if Phase.STATIC in phases:
            return WorkstreamState.STATIC_CHECK
        if Phase.RUNTIME in phases:
            return WorkstreamState.RUNTIME_CHECK
        return WorkstreamState.EDITING

    # -- control -------------------------------------------------------------------------------------
    def pause(self, run_id: str | None, now: float, at: str) -> tuple[dict[str, Any], list[Effect]]:
        self._begin(now, at)
        return self._set_paused(run_id, True), self._end()

    def resume(self, run_id: str | None, now: float, at: str) -> tuple[dict[str, Any], list[Effect]]:
        self._begin(now, at)
        return self._set_paused(run_id, False), self._end()

    def _set_paused(self, run_id: str | None, paused: bool) -> dict[str, Any]:
        if run_id is None:
            self.paused_all = paused
            if not paused:
                self.draining = False
                for run in self.runs.values():
                    run.paused = False
            runs = list(self.runs.values())
        else:
            run = self._active(run_id)
            run.paused = paused
            runs = [run]
        for run in runs:
            self._note(run, "RUN_PAUSED" if paused else "RUN_RESUMED", None, {})
            self._announce(run, "", "PAUSED" if paused else "RESUMED", "")
        if not paused:
            self._dispatch()
        return {"paused": paused, "runs": [run_id] if run_id else sorted(self.runs)}

    def drain(self, now: float, at: str) -> tuple[dict[str, Any], list[Effect]]:
        self._begin(now, at)
        self.paused_all = self.draining = True
        return {"draining": True, "running": sum(self.adapter_running.values())}, self._end()

    def stop(self, now: float, at: str) -> tuple[dict[str, Any], list[Effect]]:
        """Start nothing more and cancel every running attempt (a shutdown)."""
        self._begin(now, at)
        self.paused_all = True
        stopping = 0
        for run in self.runs.values():
            for key, running in run.running.items():
                if running.adapter != INTEGRATOR:
                    self._out.append(CancelRequested(running.adapter, run.run_id, key, running.attempt))
                    stopping += 1
        return {"stopping": stopping}, self._end()

    def cancel(self, run_id: str, task_key: str | None, now: float, at: str) -> tuple[dict[str, Any], list[Effect]]:
        """Cancel a run (``task_key`` None) or one task; only what was not finished is listed."""
        self._begin(now, at)
        run = self._active(run_id)
        if task_key is None:
            run.cancelling = True
            keys = list(run.book.states)
        else:
            state = run.book.states.get(task_key)
            if state is None:
                raise ControlRefused(f"run {run_id} has no task {task_key!r}")
            if state in TERMINAL_TASK_STATES:
                raise ControlRefused(f"task {task_key} already ended {state.value}")
            keys = [task_key]
        cancelled, killing = [], []
        for key in keys:
            state = run.book.states[key]
            if key in run.running:
                running = run.running[key]
                if running.adapter != INTEGRATOR:
                    self._out.append(CancelRequested(running.adapter, run.run_id, key, running.attempt))
                killing.append(key)
            elif state not in TERMINAL_TASK_STATES or (run.cancelling and state is TaskState.BLOCKED):
                self._fail(run, key, Verdict(TaskState.CANCELLED, ErrorClass.CANCELLED, "cancelled by request"), 0)
                cancelled.append(key)
        self._after_change(run)
        return {"cancelled": cancelled + killing, "killing": killing}, self._end()

    def retry(self, run_id: str, task_key: str, now: float, at: str) -> tuple[dict[str, Any], list[Effect]]:
        """Run a failed, timed-out, blocked or cancelled task again, with what it needs and
        its unsuccessful dependants."""
        self._begin(now, at)
        run = self._active(run_id)
        state = run.book.states.get(task_key)
        if state is None:
            raise ControlRefused(f"run {run_id} has no task {task_key!r}")
        if state not in UNSUCCESSFUL_TASK_STATES:
            raise ControlRefused(f"task {task_key} is {state.value}; only failed, timed-out, blocked or "
                                 "cancelled tasks can be retried")
        reset = sorted(retry_closure(run.book, (task_key,)))
        # A person asked to try again: a quarantine or safe mode stops standing in the way (a
        # task retried into a stopped run would wait forever), and failures are counted anew.
        run.stop_reason, run.stop_state = "", None
        run.signatures.clear()
        for key in reset:
            run.failures[key] = 0
            self._move(run, key, TaskState.PENDING, "retried by request")
        for key in reset:
            if run.book.states[key] is TaskState.PENDING and run.book.is_ready(key):
                self._queue(run, key)
        self._after_change(run)
        return {"retried": reset}, self._end()

    def approve(self, run_id: str, task_key: str, approved: bool, who: str, comment: str, now: float,
                at: str) -> tuple[dict[str, Any], list[Effect]]:
        self._begin(now, at)
        run = self._active(run_id)
        state = run.book.states.get(task_key)
        if state is not TaskState.AWAITING_APPROVAL:
            raise ControlRefused(f"task {task_key} is not awaiting approval "
                                 f"(it is {state.value if state else 'unknown'})")
        running = run.running[task_key]
        self._note(run, "TASK_APPROVED" if approved else "TASK_REJECTED", task_key,
                   {"who": who, "comment": comment, "at": at, "attempt": running.attempt})
        self._out.append(ApprovalRelayed(running.adapter, run_id, task_key, running.attempt, approved, who, comment))
        return {"task": task_key, "approved": approved, "who": who}, self._end()

    def _active(self, run_id: str) -> _Run:
        run = self.runs.get(run_id)
        if run is None:
            raise RunNotActive(f"run {run_id!r} is not active in this runtime")
        return run

    def status(self, run_id: str | None) -> dict[str, Any]:
        runs = [self._active(run_id)] if run_id else list(self.runs.values())
        depths: Counter[str] = Counter()
        for run in self.runs.values():
            depths.update(run.book.queued_adapters())
        return {
            "paused_all": self.paused_all,
            "draining": self.draining,
            "ledger_holding": self.ledger_holding,
            "running": sum(self.adapter_running.values()),
            "concurrency": self.config.concurrency,
            "circuits": {name: b.state.value for name, b in self.breakers.items()},
            "queued": dict(depths),
            "runs": [
                {
                    "run_id": run.run_id,
                    "paused": run.paused or self.paused_all,
                    "cancelling": run.cancelling,
                    "quarantine_reason": run.stop_reason if run.stop_state is RunState.QUARANTINED else "",
                    "stop_reason": run.stop_reason,
                    "waiting": self.stall_reason(blocked) if (blocked := self._stalled_on(run)) else "",
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

    # -- writing ---------------------------------------------------------------------------------------
    def _move(self, run: _Run, key: str, state: TaskState, reason: str = "", attempt: int = 0,
              adapter: str = "") -> None:
        """The one place a task's state changes (the state machine checks it)."""
        previous = run.book.set_state(key, state)
        if previous is state:
            return
        self._out.append(TaskMoved(run.run_id, key, state, reason, attempt, adapter, run.book.done_count(),
                                   len(run.book.states)))

    def _note(self, run: _Run, event_type: str, key: str | None, payload: dict[str, Any]) -> None:
        self._out.append(Noted(run.run_id, event_type, key, payload))

    def _announce(self, run: _Run, subject: str, label: str, detail: str) -> None:
        self._out.append(Announced(run.run_id, subject, label, detail, run.book.done_count(), len(run.book.states)))


def retry_closure(book: RunBook, keys: Iterable[str]) -> set[str]:
    """The tasks to reset when ``keys`` are retried: each, the unsuccessful prerequisites it
    waits on (else it could never start), and its unsuccessful dependants."""
    closure: set[str] = set()
    frontier = list(keys)
    while frontier:
        key = frontier.pop()
        if key in closure:
            continue
        closure.add(key)
        frontier += [p for p in book.deps[key] if book.states[p] in UNSUCCESSFUL_TASK_STATES]
    downstream = list(closure)
    while downstream:
        key = downstream.pop()
        for dependant in book.dependants[key]:
            if dependant not in closure and book.states[dependant] in UNSUCCESSFUL_TASK_STATES:
                closure.add(dependant)
                downstream.append(dependant)
    return closure

