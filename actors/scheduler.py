"""The Scheduler: the actor around the run core.

It turns what reaches it (executor reports, router answers, the Workspace's replies, timers,
control commands) into events for :class:`domain.run_core.RunCore`, and carries out the effects
the core returns: ledger writes, progress for watchers, attempts handed to executors, timers,
kills. Every decision — what starts, retries, blocks, when a run ends — is the core's.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from actors.base import SupervisedActor
from actors.directory import (
    LEDGER,
    ROUTER,
    WORKSPACE,
    Directory,
    PeerUnavailable,
    executor_name,
)
from actors.timers import TimerService
from domain.cache import CACHE_ADAPTER
from domain.results import ResultRef
from domain.run_core import ControlRefused, CoreConfig, RunCore
from domain.states import TaskState
from domain.run_events import (
    Announced,
    ApprovalRelayed,
    AttemptBegan,
    AttemptClosed,
    AttemptEnded,
    AttemptOpened,
    AttemptReused,
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
    Route,
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
from messages import (
    AttemptFinished,
    AttemptStarted,
    ErrorObserved,
    EventObserved,
    ExecuteTask,
    LedgerOps,
    RouteTasks,
    RunProgress,
    StartRun,
    TasksRouted,
    TaskValidating,
    TransitionRun,
    TransitionTask,
    TransitionWorkstream,
)
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
from messages.health import LedgerRecovered, LedgerStalled
from messages.runtime import (
    ApprovalDecision,
    CancelAttempt,
    ExecutorLost,
    ExecutorRestored,
    TaskAwaitingApproval,
    TaskFixing,
)
from messages.scheduler import CoreTimerFired, SchedulerTick
from messages.workspace import (
    CaptureChanges,
    ChangesCaptured,
    FinishWorkstream,
    PrepareWorkstream,
    WorkstreamFinished,
    WorkstreamPrepared,
)
from persistence.clock import utc_now_iso

log = structlog.get_logger("orchestrate.scheduler")

TICK_S = 1.0
# What executors report; a burst of them is published once (see on_receive).
_REPORTS = (AttemptStarted, AttemptFinished, TaskValidating)

__all__ = ["ControlRefused", "CoreConfig", "SchedulerActor"]


class SchedulerActor(SupervisedActor):
    def __init__(
        self,
        name: str,
        directory: Directory,
        config: CoreConfig,
        timers: TimerService,
        progress: Callable[[tuple[RunProgress, ...]], None],
        kill_process: Callable[[int, float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, directory)
        self.core = RunCore(config)
        self.timers = timers
        self.progress = progress
        self._said: list[RunProgress] = []  # progress of the effects being carried out
        self.kill_process = kill_process
        self.clock = clock
        self.ticking = False
        self._backlog: deque[Any] = deque()  # ledger ops waiting for a Ledger to exist

    # -- mailbox -------------------------------------------------------------------------------
    def handle(self, message: object) -> object:
        event = self._event_for(message)
        if event is not None:
            self._carry_out(self.core.handle(event, self.clock(), utc_now_iso()))
            if isinstance(message, StartRun):
                self._keep_ticking()
            return None
        return self._control(message)

    def _event_for(self, message: object) -> Event | None:
        """The core's event for an actor message, or None for a control message."""
        match message:
            case StartRun():
                return RunOpened(
                    run_id=message.run_id, plan=message.plan,
                    log_dir=str(Path(message.state_dir) / "logs" / message.run_id),
                    task_states=dict(message.task_states), ws_states=dict(message.workstream_states),
                    attempts=dict(message.attempts), failures=dict(message.failures),
                    interrupted=message.interrupted, reset=message.reset,
                    results=dict(message.results), keys=dict(message.keys),
                    definitions=dict(message.definitions), cached=dict(message.cached),
                    costs=dict(message.costs),
                )
            case TasksRouted():
                return Routed(message.run_id, tuple(Route(r.task_key, r.adapter, r.reason) for r in message.routes))
            case AttemptStarted():
                return AttemptBegan(message.run_id, message.task_key, message.attempt, message.pid,
                                    message.pid_create_time, report=message)
            case TaskValidating():
                return PhaseBegan(message.run_id, message.task_key, message.attempt, Phase(message.phase))
            case TaskAwaitingApproval():
                return PhaseBegan(message.run_id, message.task_key, message.attempt, Phase.AWAITING, message.prompt)
            case TaskFixing():
                return PhaseBegan(message.run_id, message.task_key, message.attempt, Phase.FIXING, message.reason,
                                  message.round)
            case AttemptFinished():
                result = (ResultRef(message.result_json, message.result_file)
                          if message.result_json or message.result_file else None)
                return AttemptEnded(message.run_id, message.task_key, message.attempt, message.verdict,
                                    message.duration_s, message.gate_output, report=message, result=result,
                                    cache_key=message.cache_key, cost_usd=message.cost_usd)
            case ChangesCaptured():
                return ChangesRecorded(message.run_id, message.task_key, message.attempt, message.error)
            case WorkstreamPrepared():
                return WorktreeReady(message.run_id, message.ws_id, message.path, message.error, message.env)
            case WorkstreamFinished():
                return IntegrationEnded(message.run_id, message.ws_id, message.merged, message.branch,
                                        message.target_branch, message.merge_commit, message.conflicts, message.error,
                                        message.resolve_path, message.hunks)
            case CoreTimerFired():
                return message.event
            case SchedulerTick():
                self._flush_backlog()
                return Tick()
            case ExecutorLost():
                return ExecutorDown(message.adapter, message.error)
            case ExecutorRestored():
                return ExecutorUp(message.adapter)
            case LedgerStalled():
                return LedgerHold(True)
            case LedgerRecovered():
                return LedgerHold(False)
        return None

    def _keep_ticking(self) -> None:
        """A tick a second while runs are active, so a stall is noticed and said."""
        if self.ticking or not self.core.runs:
            return
        self.ticking = True
        me = self.actor_ref

        def tick() -> None:
            me.tell(SchedulerTick())

        self.timers.call_later(TICK_S, tick)

    def on_receive(self, message: object) -> object:
        try:
            if isinstance(message, SchedulerTick):
                self.ticking = False
                result = super().on_receive(message)
                self._keep_ticking()
                return result
            return super().on_receive(message)
        finally:
            # Reports from executors arrive in bursts: what their decisions recorded and said is
            # sent once the burst is handled (one Ledger message, one progress batch, for many
            # tasks). Anything else — a command someone waits on — sends at once.
            if not isinstance(message, _REPORTS) or self.actor_inbox.empty():
                self._publish()

    # -- control -----------------------------------------------------------------------------------
    def _control(self, message: object) -> object:
        now, at = self.clock(), utc_now_iso()
        core = self.core
        match message:
            case StatusQuery():
                return core.status(message.run_id)
            case PauseRuns():
                result, effects = core.pause(message.run_id, now, at)
            case ResumeRuns():
                result, effects = core.resume(message.run_id, now, at)
            case CancelWork():
                result, effects = core.cancel(message.run_id, message.task_key, now, at)
            case RetryTask():
                result, effects = core.retry(message.run_id, message.task_key, now, at)
            case Approval():
                result, effects = core.approve(message.run_id, message.task_key, message.approved, message.who,
                                               message.comment, now, at)
            case Drain():
                result, effects = core.drain(now, at)
            case StopRuns():
                result, effects = core.stop(now, at)
            case _:
                return None
        self._carry_out(effects)
        return result

    # -- effects ----------------------------------------------------------------------------------
    def _carry_out(self, effects: list[Effect]) -> None:
        at = utc_now_iso()
        self._carry_out_each(effects, at)

    def _carry_out_each(self, effects: list[Effect], at: str) -> None:
        for effect in effects:
            match effect:
                case TaskMoved():
                    self._ledger(TransitionTask(effect.run_id, effect.task_key, effect.state, at, effect.attempt,
                                                effect.reason, effect.adapter))
                    self._said.append(RunProgress(effect.run_id, effect.task_key, effect.state.value, at, effect.done,
                                              effect.total, effect.reason, attempt=effect.attempt))
                case WorkstreamMoved():
                    self._ledger(TransitionWorkstream(effect.run_id, effect.ws_id, effect.state, at))
                case RunMoved():
                    self._ledger(TransitionRun(effect.run_id, effect.state, at, effect.reason))
                    if effect.finished:
                        self._said.append(RunProgress(effect.run_id, "", effect.state.value, at, effect.done,
                                                  effect.total, effect.reason, finished_run_state=effect.state.value))
                case ReportAccepted():
                    self._ledger(replace(effect.report, cache_key=effect.cache_key) if effect.cache_key
                                 else effect.report)
                case AttemptOpened():
                    self._ledger(AttemptStarted(effect.run_id, effect.ws_id, effect.task_key, effect.attempt,
                                                effect.adapter, at))
                case AttemptClosed():
                    self._ledger(AttemptFinished.of(effect.run_id, effect.task_key, effect.attempt, effect.verdict, at,
                                                      effect.duration_s, effect.result, effect.cache_key))
                case ErrorCounted():
                    context = json.dumps({"gate_output": effect.gate_output[-2000:]}) if effect.gate_output else ""
                    self._ledger(ErrorObserved(effect.run_id, effect.ws_id, effect.task_key, effect.error_class,
                                               effect.signature, effect.message, at, context))
                case Noted():
                    ws_id = effect.task_key.split("/", 1)[0] if effect.task_key else None
                    self._ledger(EventObserved(effect.event_type, at, effect.run_id, ws_id, effect.task_key,
                                               json.dumps(dict(effect.payload), sort_keys=True)))
                case Announced():
                    self._said.append(RunProgress(effect.run_id, effect.subject, effect.label, at, effect.done,
                                              effect.total, effect.detail))
                case RouteRequested():
                    self.directory.tell(ROUTER, RouteTasks(effect.run_id, effect.tasks, effect.open_circuits,
                                                           effect.load))
                case Dispatched():
                    self._dispatch(effect)
                case CancelRequested():
                    self._tell_executor(effect.adapter, CancelAttempt(effect.run_id, effect.task_key, effect.attempt))
                case ApprovalRelayed():
                    self._tell_executor(effect.adapter, ApprovalDecision(effect.run_id, effect.task_key, effect.attempt,
                                                                         effect.approved, effect.who, effect.comment))
                case ProcessKill():
                    self.kill_process(effect.pid, effect.create_time)
                case TimerSet():
                    self.timers.call_later(effect.delay_s, partial(self.actor_ref.tell, CoreTimerFired(effect.event)))
                case WorktreeWanted():
                    self.directory.tell(WORKSPACE, PrepareWorkstream(effect.run_id, effect.ws_id, effect.repo,
                                                                     effect.setup, effect.copy, effect.link,
                                                                     effect.ports))
                case CaptureWanted():
                    self.directory.tell(WORKSPACE, CaptureChanges(effect.run_id, effect.ws_id, effect.task_key,
                                                                  effect.attempt, keep=effect.keep))
                case AttemptReused():
                    hit = effect.hit
                    self._ledger(AttemptStarted(effect.run_id, effect.ws_id, effect.task_key, effect.attempt,
                                                CACHE_ADAPTER, at))
                    self._ledger(AttemptFinished(effect.run_id, effect.task_key, effect.attempt, TaskState.COMPLETED,
                                                 at, duration_s=0.0, message=f"cached: result of {hit.source}",
                                                 result_json=hit.result.text, result_file=hit.result.path,
                                                 outputs_json=hit.outputs_json, cache_key=hit.cache_key,
                                                 cached_from=hit.source))
                case IntegrationWanted():
                    self.directory.tell(WORKSPACE, FinishWorkstream(effect.run_id, effect.ws_id,
                                                                    effect.target_branch, effect.mode,
                                                                    effect.on_conflict, effect.resolution,
                                                                    effect.resolution_failure))

    def _dispatch(self, effect: Dispatched) -> None:
        try:
            self.directory.tell(executor_name(effect.adapter),
                                ExecuteTask(effect.run_id, effect.task, effect.attempt, effect.log_path,
                                            effect.inputs, effect.cache_basis))
        except PeerUnavailable:
            refused = DispatchRefused(effect.run_id, effect.task.key, effect.attempt, effect.adapter)
            self._carry_out(self.core.handle(refused, self.clock(), utc_now_iso()))

    def _tell_executor(self, adapter: str, message: object) -> None:
        try:
            self.directory.tell(executor_name(adapter), message)
        except PeerUnavailable:
            log.warning("executor_unavailable", adapter=adapter, message=type(message).__name__)

    def _ledger(self, op: Any) -> None:
        """Record ``op``: it is told to the Ledger, with the others of the same decision, when
        the effects have been carried out; while the Ledger is between incarnations ops wait
        here, in order, and go to the next one (a record is delayed, never dropped)."""
        self._backlog.append(op)

    def _publish(self) -> None:
        """Send what was recorded to the Ledger and what was said to watchers, each as one
        message: every message is a thread to wake, the costliest part of a short task."""
        self._flush_backlog()
        if self._said:
            said, self._said = tuple(self._said), []
            self.progress(said)

    def _flush_backlog(self) -> None:
        if not self._backlog:
            return
        ops = tuple(self._backlog)
        try:
            self.directory.tell(LEDGER, ops[0] if len(ops) == 1 else LedgerOps(ops))
        except PeerUnavailable:
            log.warning("ledger_unavailable_holding_records", held=len(ops))
            return
        self._backlog.clear()
