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
from domain.cache import CACHE_ADAPTER, CacheHit, cache_basis, cache_key, merge_result
from domain.errors import ErrorClass, error_signature
from domain.graph import task_dependencies, topological_order
from domain.outcomes import Evidence, Verdict
from domain.plan import INTEGRATION_TOOL, AcceptanceCheck, TaskSpec, Workstream, repo_relative
from domain.results import ResultRef
from domain.retry import RetryPolicy
from domain.retry_targets import NothingToRetry, retry_targets
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
    env: tuple[tuple[str, str], ...] = ()  # what its tasks get besides their own (its ports)
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
    # Outcomes a person's retry reopened: counted on both sides of the progress counter, so it
    # never goes backwards (a retry of a failed task shows as one more outcome to wait for).
    reopened: int = 0

    def progress(self) -> tuple[int, int]:
        """(outcomes reached, outcomes expected) for progress displays: only ever grows."""
        return self.book.done_count() + self.reopened, len(self.book.states) + self.reopened
    phases: dict[str, Phase] = field(default_factory=dict)
    capturing: dict[str, AttemptEnded] = field(default_factory=dict)
    integrating: set[str] = field(default_factory=set)
    # Merge steps whose conflicts an agent is resolving (key -> what was conflicting), and the
    # workstreams whose resolution was tried this run (a second conflict fails, no loop).
    resolving: dict[str, IntegrationEnded] = field(default_factory=dict)
    resolution_tried: set[str] = field(default_factory=set)
    merges_waiting: list[str] = field(default_factory=list)  # merge steps waiting for their turn
    agent_history: dict[str, list[_Running]] = field(default_factory=dict)  # per workstream, latest first
    stalled_since: float | None = None
    stall_said_at: float | None = None
    # Results of completed tasks some task takes as input; cache keys of completed tasks;
    # definition digests of cacheable tasks; tasks to complete from an earlier run's result.
    results: dict[str, ResultRef] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    definitions: dict[str, str] = field(default_factory=dict)
    cached: dict[str, CacheHit] = field(default_factory=dict)
    consumed: frozenset[str] = frozenset()
    costs: Counter[float] = field(default_factory=Counter)  # what agent attempts cost, per task
    budget_usd: float | None = None  # the run's
    budget_reason: str = ""  # the first budget found spent, for the run's closing reason
    ws_budgets: dict[str, float] = field(default_factory=dict)


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
            costs=Counter(event.costs),
            budget_usd=plan.budget_usd,
            ws_budgets={ws.id: ws.budget_usd for ws in plan.workstreams if ws.budget_usd is not None},
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
        if self.adapters[adapter].type in AGENT_TYPES and (spent := budget_spent(run, key)):
            self._stop_for_budget(run, key, spent)
            return
        run.attempts[key] += 1
        attempt = run.attempts[key]
        run.running[key] = _Running(adapter, attempt, self.now)
        self.adapter_running[adapter] += 1
        self.breakers[adapter].started()
        spec = self._in_worktree(run, run.specs[key])
        log_path = attempt_log_path(run.log_dir, spec.workstream_id, spec.id, attempt)
        inputs = tuple((name, run.results.get(up, NO_RESULT)) for name, up in spec.inputs) if spec.inputs else ()
        # A worktree task's key hashes no files (see _lane_key): the executor has nothing to add.
        basis = self._basis(run, key) if spec.workstream_id not in run.lanes else ""
        self._out.append(Dispatched(run.run_id, spec, attempt, adapter, log_path, inputs, basis))

    def _basis(self, run: _Run, key: str) -> str:
        """``key``'s cache key without its files (see :func:`domain.cache.cache_basis`); "" when
        it is not cacheable."""
        definition = run.definitions.get(key)
        return cache_basis(definition, [run.keys.get(dep, "") for dep in run.book.deps[key]]) if definition else ""

    def _lane_key(self, run: _Run, key: str) -> str:
        """The cache key of a worktree workstream's task, known before it runs: the files it
        reads are its branch's, vouched for by the workstream's merge (see domain.cache)."""
        basis = self._basis(run, key) if run.specs[key].workstream_id in run.lanes else ""
        return cache_key(basis, {}) if basis else ""

    def _stop_for_budget(self, run: _Run, key: str, reason: str) -> None:
        """``key`` may not start an agent attempt: a budget is spent. It and what waits on it
        end BLOCKED; running attempts finish; other work goes on."""
        self._free_lane(run, key)
        self._block(run, key, reason)
        run.budget_reason = run.budget_reason or f"{reason} (agent steps not started)"
        self._note(run, "BUDGET_EXHAUSTED", key, {"reason": reason, "spent_usd": round(sum(run.costs.values()), 8)})
        for dependant in run.book.blocked_by(key):
            self._block(run, dependant, f"budget: dependency {key} was not started")
        self._refresh_workstreams(run)
        self._check_finished(run)

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
        if run.resolving.pop(event.task_key, None) is not None:
            self._integrate(run, event.task_key, resolution="abandon",
                            failure=f"the agent's executor {event.adapter} is down")
        elif run.cancelling:
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
        if event.cost_usd:
            run.costs[key] += event.cost_usd
        verdict = event.verdict
        lane_key = ""  # the key of a worktree task, which its executor could not know
        if verdict.state is TaskState.COMPLETED:
            if key in run.consumed:
                run.results[key] = event.result or NO_RESULT
            lane_key = "" if event.cache_key else self._lane_key(run, key)
            if event.cache_key or lane_key:
                run.keys[key] = event.cache_key or lane_key
        self._out.append(ReportAccepted(event.report, lane_key))
        self._breaker_saw(running.adapter, verdict, run)
        if self.adapters.get(running.adapter) and self.adapters[running.adapter].type in AGENT_TYPES:
            run.agent_history.setdefault(run.specs[key].workstream_id, []).insert(0, running)
        if key in run.resolving:
            self._resolution_ended(run, key, verdict)
            return
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
        said = run.stop_reason or run.budget_reason
        reason = f"{said}; {counts}" if said else counts
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
            ws = lane.workstream
            self._out.append(WorktreeWanted(run.run_id, ws.id, ws.repo or "", ws.setup, ws.copy, ws.link, ws.ports))

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
            lane.path, lane.env = event.path, event.env
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
        moved = os.path.join(lane.path, repo_relative(os.path.realpath(spec.cwd or repo), os.path.realpath(repo)))
        # The worktree's variables first: the task's own win.
        env = tuple(sorted((dict(lane.env) | dict(spec.env)).items())) if lane.env else spec.env
        return replace(spec, cwd=os.path.normpath(moved), env=env)

    def _changes_recorded(self, event: ChangesRecorded) -> None:
        run = self.runs.get(event.run_id)
        ended = run.capturing.get(event.task_key) if run else None
        if run is None or ended is None or ended.attempt != event.attempt:
            return
        if event.error:
            self._note(run, "PATCH_CAPTURE_FAILED", event.task_key, {"error": event.error})
        self._attempt_ended(ended)

    def _integrate(self, run: _Run, key: str, resolution: str = "", failure: str = "") -> None:
        """A workstream's merge step: all its tasks completed, its branch goes to its target
        (``resolution``: what to do with an agent's resolution of its conflicts)."""
        lane = run.lanes[run.specs[key].workstream_id]
        ws = lane.workstream
        if not resolution and not self._merge_turn(run, key):
            run.merges_waiting.append(key)
            return
        run.attempts[key] += 1
        attempt = run.attempts[key]
        run.running[key] = _Running(INTEGRATOR, attempt, self.now, started=True)
        run.integrating.add(ws.id)
        self._out.append(AttemptOpened(run.run_id, ws.id, key, attempt, INTEGRATOR))
        if run.book.states[key] is TaskState.QUEUED:
            self._move(run, key, TaskState.IN_PROGRESS, "", attempt, INTEGRATOR)
        self._out.append(IntegrationWanted(run.run_id, ws.id, ws.target_branch, ws.merge, ws.on_conflict,
                                           resolution, failure))

    def _merge_turn(self, run: _Run, key: str) -> bool:
        """Whether ``key`` may merge now: merges into one branch of one repository go one at a
        time, in the run's task order (plan order, except that a workstream merges after those
        it depends on), so their result never depends on which workstream finished first. An
        earlier merge step never waits on a later one, so this cannot deadlock."""
        ws = run.lanes[run.specs[key].workstream_id].workstream
        for step in run.book.deps:  # topological order, ties in plan order
            if step == key:
                return True
            spec = run.specs[step]
            other = run.lanes[spec.workstream_id].workstream if spec.tool == INTEGRATION_TOOL else None
            if (other is not None and other.merge == "merge" and other.repo == ws.repo
                    and other.target_branch == ws.target_branch
                    and run.book.states[step] not in TERMINAL_TASK_STATES):
                return False
        return True

    def _next_merges(self, run: _Run) -> None:
        """Start the waiting merge steps whose turn has come."""
        waiting, run.merges_waiting = run.merges_waiting, []
        for key in waiting:
            if run.book.states[key] is TaskState.QUEUED:
                self._integrate(run, key)

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
        if event.resolve_path and self._resolve(run, key, running, event):
            return
        result, merged_key = None, ""
        if event.merged:
            verdict = Verdict(TaskState.COMPLETED, None,
                              f"merged {event.branch} into {event.target} ({event.commit[:10]})")
            self._note(run, "WORKSTREAM_MERGED", None, payload)
            result = ResultRef(merge_result(event.commit, event.branch, event.target))
            merged_key = self._lane_key(run, key)
            if merged_key:
                run.keys[key] = merged_key
            if key in run.consumed:
                run.results[key] = result
        elif event.ws_id in run.resolution_tried and event.conflicts:
            why = (f"merge into {event.target} conflicts in {', '.join(event.conflicts)}; "
                   f"{event.error.rstrip('.') or 'not resolved'}; branch {event.branch} left for review")
            verdict = Verdict(TaskState.FAILED, ErrorClass.MERGE, why)
            self._note(run, "MERGE_CONFLICT", None, payload)
        elif event.conflicts or event.error:
            why = (f"merge into {event.target} conflicts in {', '.join(event.conflicts)}; branch {event.branch} "
                   "left for review" if event.conflicts else
                   f"{event.error.rstrip('.')}; once that is fixed, "
                   f"`orchestrate retry {run.run_id} {event.ws_id}` merges it")
            verdict = Verdict(TaskState.FAILED, ErrorClass.MERGE, why)
            self._note(run, "MERGE_CONFLICT" if event.conflicts else "MERGE_FAILED", None, payload)
        else:
            verdict = Verdict(TaskState.COMPLETED, None, f"{event.branch} left for review")
            self._note(run, "BRANCH_LEFT", None, payload)
        took = self.now - running.began
        self._out.append(AttemptClosed(run.run_id, key, running.attempt, verdict, took, result, merged_key))
        self._conclude(run, key, running.attempt, verdict, took)
        self._next_merges(run)
        self._after_change(run)

    def _resolve(self, run: _Run, key: str, running: _Running, event: IntegrationEnded) -> bool:
        """A conflicting merge waits in an integration worktree: hand it to an agent (an attempt
        of the merge step, with the workstream's acceptance checks as its gates). False when no
        agent may take it (then the merge fails as any conflict does)."""
        ws = run.lanes[event.ws_id].workstream
        adapter = self._resolver(run, ws)
        spent = budget_spent(run, key) if adapter else ""
        if event.ws_id in run.resolution_tried or not adapter or spent:
            why = spent or ("no agent adapter to resolve it" if not adapter else "already tried")
            run.resolution_tried.add(event.ws_id)
            self._out.append(AttemptClosed(run.run_id, key, running.attempt, Verdict(
                TaskState.FAILED, ErrorClass.MERGE, f"conflicts in {', '.join(event.conflicts)}: {why}"),
                self.now - running.began))
            self._integrate(run, key, resolution="abandon", failure=why)
            return True
        run.resolution_tried.add(event.ws_id)
        self._out.append(AttemptClosed(run.run_id, key, running.attempt, Verdict(
            TaskState.FAILED, ErrorClass.MERGE,
            f"merge into {event.target} conflicts in {', '.join(event.conflicts)}; an agent ({adapter}) resolves them"),
            self.now - running.began))
        self._note(run, "MERGE_RESOLUTION", key, {"adapter": adapter, "conflicts": list(event.conflicts),
                                                  "path": event.resolve_path})
        self._announce(run, key, "RESOLVING", f"conflicts in {', '.join(event.conflicts)}: {adapter} resolves them")
        run.resolving[key] = event
        run.attempts[key] += 1
        attempt = run.attempts[key]
        run.running[key] = _Running(adapter, attempt, self.now)
        self.adapter_running[adapter] += 1
        self.breakers[adapter].started()
        spec = resolution_task(run.specs[key], ws, event, self.adapters[adapter])
        spec = replace(spec, env=tuple(sorted((dict(run.lanes[event.ws_id].env) | dict(spec.env)).items())))
        log_path = os.path.join(run.log_dir, ws.id, f"@merge.resolve{attempt}.log")
        self._out.append(Dispatched(run.run_id, spec, attempt, adapter, log_path))
        return True

    def _resolver(self, run: _Run, ws: Workstream) -> str:
        """The agent adapter that resolves ``ws``'s conflicts: the one that served its agent
        tasks, else the first agent adapter configured whose circuit is not open; "" for none."""
        used = [running.adapter for running in run.agent_history.get(ws.id, ())]
        candidates = used + [name for name, info in self.adapters.items() if info.type in AGENT_TYPES]
        for name in candidates:
            if name not in self.down and self.breakers[name].state is not CircuitState.OPEN:
                return name
        return ""

    def _resolution_ended(self, run: _Run, key: str, verdict: Verdict) -> None:
        """The agent's resolution attempt ended: merge it if it passed its gates (the Workspace
        still refuses one with conflict markers), else drop it and leave the branch."""
        run.resolving.pop(key)
        if verdict.state is TaskState.COMPLETED:
            self._integrate(run, key, resolution="resolved")
        else:
            self._integrate(run, key, resolution="abandon",
                            failure=f"the agent's resolution failed ({verdict.state.value}): {verdict.message}")
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
        """Cancel a run (``task_key`` None) or one task. The result lists, apart, what this
        cancelled now (``cancelled``: moved to CANCELLED) and what was running and is being
        killed (``killing``: its outcome follows — CANCELLED, or what it ended as if it finished
        first); a task that had ended is in neither."""
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
        return {"cancelled": cancelled, "killing": killing}, self._end()

    def retry(self, run_id: str, task_key: str, now: float, at: str) -> tuple[dict[str, Any], list[Effect]]:
        """Run a failed, timed-out, blocked or cancelled task again — or every such task of a
        workstream, when ``task_key`` is a workstream id — with what it needs and its
        unsuccessful dependants."""
        self._begin(now, at)
        run = self._active(run_id)
        try:
            targets = retry_targets(run_id, run.book.states, task_key)
        except NothingToRetry as refusal:
            raise ControlRefused(str(refusal)) from None
        reset = sorted(retry_closure(run.book, targets))
        # A person asked to try again: a quarantine or safe mode stops standing in the way (a
        # task retried into a stopped run would wait forever), and failures are counted anew.
        run.stop_reason, run.stop_state = "", None
        run.signatures.clear()
        for key in reset:
            run.failures[key] = 0
            if run.book.states[key] in TERMINAL_TASK_STATES:
                run.reopened += 1
            self._move(run, key, TaskState.PENDING, "retried by request")
        others = [key for key in reset if key != task_key]
        self._announce(run, task_key, "RETRIED", "by request" + (f", with {', '.join(others)}" if others else ""))
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
        self._out.append(TaskMoved(run.run_id, key, state, reason, attempt, adapter, *run.progress()))

    def _note(self, run: _Run, event_type: str, key: str | None, payload: dict[str, Any]) -> None:
        self._out.append(Noted(run.run_id, event_type, key, payload))

    def _announce(self, run: _Run, subject: str, label: str, detail: str) -> None:
        self._out.append(Announced(run.run_id, subject, label, detail, *run.progress()))


def attempt_log_path(log_dir: str, ws_id: str, task_id: str, attempt: int) -> str:
    """Where attempt ``attempt`` of task ``ws_id/task_id`` writes its output, under the run's
    ``log_dir``: ``<ws>/<task>.log``, then ``<ws>/<task>.attempt<N>.log``."""
    name = task_id if attempt <= 1 else f"{task_id}.attempt{attempt}"
    return os.path.join(log_dir, ws_id, f"{name}.log")


#: Adapter types whose attempts spend money (and report it): budgets apply to them.
AGENT_TYPES = frozenset({"aider", "agent"})


def budget_spent(run: _Run, key: str) -> str:
    """Why ``key`` may start no agent attempt — the first budget that is spent: the task's
    ``max_cost_usd``, its workstream's ``budget_usd``, the run's — or "" when none is."""
    spec = run.specs[key]
    task_spent = run.costs[key]
    if spec.max_cost_usd is not None and task_spent >= spec.max_cost_usd:
        return f"budget: task {key} has cost ${task_spent:.6g} of its max_cost_usd ${spec.max_cost_usd:g}"
    ws_budget = run.ws_budgets.get(spec.workstream_id)
    if ws_budget is not None:
        ws_spent = sum(cost for other, cost in run.costs.items()
                       if run.specs[other].workstream_id == spec.workstream_id)
        if ws_spent >= ws_budget:
            return (f"budget: workstream {spec.workstream_id} has spent ${ws_spent:.6g} of its "
                    f"budget_usd ${ws_budget:g}")
    if run.budget_usd is not None:
        run_spent = sum(run.costs.values())
        if run_spent >= run.budget_usd:
            return f"budget: the run has spent ${run_spent:.6g} of its budget_usd ${run.budget_usd:g}"
    return ""


def resolution_task(step: TaskSpec, ws: Workstream, conflict: IntegrationEnded, adapter: AdapterInfo) -> TaskSpec:
    """The agent task that resolves ``ws``'s conflicting merge in its integration worktree:
    the conflicting paths and hunks in its prompt, the workstream's acceptance checks (each
    once, in plan order) as its gates."""
    checks: list[AcceptanceCheck] = []
    for task in ws.tasks:
        checks += [check for check in task.acceptance if check not in checks]
    prompt = (
        f"Merging branch {conflict.branch} (workstream {ws.id}) into {conflict.target} conflicts in: "
        f"{', '.join(conflict.conflicts)}.\n"
        "This checkout holds the merge in progress. Edit the conflicting files so that the result keeps the "
        "intent of both sides, and remove every conflict marker (<<<<<<<, =======, >>>>>>>). Do not commit.\n\n"
        f"The conflicting hunks:\n{conflict.hunks}\n"
    )
    return replace(step, tool=adapter.type, prompt=prompt, files=conflict.conflicts, cwd=conflict.resolve_path,
                   acceptance=tuple(checks), depends_on=())


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

