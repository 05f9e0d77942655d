"""The human executor: a task done by a person, who approves or rejects it.

An attempt waits in AWAITING_APPROVAL until an :class:`ApprovalDecision` arrives (from the
control socket, through the Scheduler), its ``approval_timeout_s`` passes, or it is
cancelled. Nothing runs and nothing blocks: waiting is just an entry in a dict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from actors.attempts import attempt_finished, attempt_started
from actors.base import SupervisedActor
from actors.directory import SCHEDULER, Directory
from actors.timers import TimerService
from domain.errors import ErrorClass
from domain.outcomes import Verdict
from domain.states import TaskState
from messages import ExecuteTask
from messages.runtime import (
    ApprovalDecision,
    ApprovalTimedOut,
    CancelAttempt,
    TaskAwaitingApproval,
)
from persistence.clock import utc_now_iso


@dataclass(slots=True)
class _Waiting:
    request: ExecuteTask
    started: float
    timer: int | None


class HumanExecutorActor(SupervisedActor):
    def __init__(self, name: str, directory: Directory, adapter_name: str, timers: TimerService) -> None:
        super().__init__(name, directory)
        self.adapter_name = adapter_name
        self.timers = timers
        self.waiting: dict[tuple[str, str, int], _Waiting] = {}

    def handle(self, message: object) -> None:
        if isinstance(message, ExecuteTask):
            self._ask(message)
        elif isinstance(message, ApprovalDecision):
            self._decided(message)
        elif isinstance(message, ApprovalTimedOut):
            key = (message.run_id, message.task_key, message.attempt)
            if key in self.waiting:
                timeout = self.waiting[key].request.task.approval_timeout_s
                self._finish(key, TaskState.TIMEOUT, ErrorClass.TIMEOUT, f"no decision within {timeout:g}s")
        elif isinstance(message, CancelAttempt):
            key = (message.run_id, message.task_key, message.attempt)
            if key in self.waiting:
                self._finish(key, TaskState.CANCELLED, ErrorClass.CANCELLED, "cancelled while awaiting approval")

    def _ask(self, request: ExecuteTask) -> None:
        task = request.task
        key = (request.run_id, task.key, request.attempt)
        timer = None
        if task.approval_timeout_s is not None:
            me = self.actor_ref
            timer = self.timers.call_later(
                task.approval_timeout_s, lambda: me.tell(ApprovalTimedOut(*key))
            )
        self.waiting[key] = _Waiting(request, time.monotonic(), timer)
        self.directory.tell(
            SCHEDULER,
            attempt_started(request, self.adapter_name),
        )
        self.directory.tell(
            SCHEDULER, TaskAwaitingApproval(request.run_id, task.key, request.attempt, task.prompt or "", utc_now_iso())
        )

    def _decided(self, decision: ApprovalDecision) -> None:
        key = (decision.run_id, decision.task_key, decision.attempt)
        if key not in self.waiting:
            return
        comment = f": {decision.comment}" if decision.comment else ""
        if decision.approved:
            self._finish(key, TaskState.COMPLETED, None, f"approved by {decision.who}{comment}")
        else:
            self._finish(key, TaskState.FAILED, ErrorClass.REJECTED, f"rejected by {decision.who}{comment}")

    def _finish(self, key: tuple[str, str, int], state: TaskState, error_class: ErrorClass | None, message: str) -> None:
        waiting = self.waiting.pop(key)
        if waiting.timer is not None:
            self.timers.cancel(waiting.timer)
        self.directory.tell(
            SCHEDULER,
            attempt_finished(key, Verdict(state, error_class, message), waiting.started),
        )
