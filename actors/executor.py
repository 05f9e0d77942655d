"""Executor: one actor per adapter; runs attempts without ever blocking its mailbox.

Processes are started here and watched by the shared :class:`ProcessReactor`, which tells
this actor a :class:`ProcessExited` when one ends; a python task's callable runs on the shared
:class:`WorkerPool` instead (unless the task asks for ``"isolation": "process"``), which reports
the same way. The executor then runs the task's acceptance checks (state VALIDATING;
static-phase checks first, then runtime ones, see :mod:`adapters.gates`) one after another and
reports the outcome to the Scheduler. Exit codes are facts, not verdicts: the outcome is
decided here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from actors.attempts import (
    attempt_finished,
    attempt_marker,
    attempt_started,
    start_for_attempt,
)
from actors.base import SupervisedActor
from actors.directory import SCHEDULER, Directory
from adapters.gates import (
    check_passed,
    check_spec,
    describe_check_failure,
    failure_reason,
    ordered_checks,
)
from adapters.pool import WorkerPool
from adapters.process import ProcessReactor
from adapters.pycall import NOT_RETURNED, callable_returned
from adapters.tools import PythonAdapter, ToolAdapter, result_path
from domain.errors import ErrorClass
from domain.outcomes import (
    COMPLETED,
    ProcessOutcome,
    ProcessResult,
    Verdict,
    check_verdict,
    tool_verdict,
)
from domain.plan import AcceptanceCheck
from domain.run_events import Phase
from domain.states import TaskState
from messages import ExecuteTask, TaskValidating
from messages.executor import ProcessExited
from messages.runtime import CancelAttempt
from persistence.clock import utc_now_iso

log = structlog.get_logger("orchestrate.executor")

GATE_OUTPUT_LIMIT = 4000
# Less free space than this where a task's log goes: its output could not have been written.
FULL_DISK_BYTES = 64 * 1024


@dataclass(slots=True)
class _InFlight:
    request: ExecuteTask
    started: float
    tool_result: ProcessResult | None = None
    # (index in task.acceptance, check) in the order they run, and the position reached.
    checks: list[tuple[int, AcceptanceCheck]] = field(default_factory=list)
    position: int = 0
    gate_log: str = ""
    pooled: bool = False  # a python worker runs the tool's callable
    cancelled: bool = False


def _tail(path: str, limit: int = GATE_OUTPUT_LIMIT) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_line(path: str) -> str:
    """The last non-empty line a tool printed: usually the reason it failed."""
    for line in reversed(_tail(path, 1000).splitlines()):
        if line.strip():
            return line.strip()[:200]
    return ""


def _full_filesystem(path: str) -> str:
    """The directory of ``path`` when its filesystem has (next to) no space left, else ""."""
    directory = os.path.dirname(path) or "."
    try:
        stats = os.statvfs(directory)
    except OSError:
        return ""
    return directory if stats.f_bavail * stats.f_frsize < FULL_DISK_BYTES else ""


def _read_result(log_path: str) -> str:
    try:
        with open(result_path(log_path), encoding="utf-8") as handle:
            return handle.read(64 * 1024)
    except OSError:
        return ""


class ExecutorActor(SupervisedActor):
    def __init__(
        self, name: str, directory: Directory, adapter_name: str, adapter: ToolAdapter, reactor: ProcessReactor,
        pool: WorkerPool | None = None,
    ) -> None:
        super().__init__(name, directory)
        self.adapter_name = adapter_name
        self.adapter = adapter
        self.reactor = reactor
        self.pool = pool  # python workers; None: every python task gets a fresh interpreter
        self.in_flight: dict[tuple[str, str, int], _InFlight] = {}
        # Only a callable has a return value; reading for one after every shell task is waste.
        self._returns_values = isinstance(adapter, PythonAdapter)

    def handle(self, message: object) -> None:
        if isinstance(message, ExecuteTask):
            self._start(message)
        elif isinstance(message, ProcessExited):
            self._exited(message)
        elif isinstance(message, CancelAttempt):
            self._cancel(message)

    def _cancel(self, message: CancelAttempt) -> None:
        flight = self.in_flight.get((message.run_id, message.task_key, message.attempt))
        if flight is None:
            return
        flight.cancelled = True
        # By the attempt's marker: a worker may already run the next task, a start be under way.
        if flight.pooled and self.pool is not None:
            self.pool.cancel_marked(attempt_marker(flight.request))
        else:
            self.reactor.cancel_marked(attempt_marker(flight.request))

    # -- the tool --------------------------------------------------------------------------
    def _start(self, request: ExecuteTask) -> None:
        key = (request.run_id, request.task.key, request.attempt)
        flight = self.in_flight[key] = _InFlight(request=request, started=time.monotonic())
        directory, adapter = self.directory, self.adapter_name

        def started(pid: int, create_time: float) -> None:
            # On a spawner or the pool's thread, before the process (or the worker's reply) can
            # be reported: the Scheduler always hears AttemptStarted before AttemptFinished.
            directory.tell(SCHEDULER, attempt_started(request, adapter, pid, create_time))

        if self.pool is not None and isinstance(self.adapter, PythonAdapter) and self.adapter.uses_worker(request.task):
            flight.pooled = True
            call = self.adapter.call_spec(request.task, request.log_path)
            start_for_attempt(self.pool, self.actor_ref, call, request, "tool", on_started=started)
            return
        spec = self.adapter.process_spec(request.task, request.log_path)
        start_for_attempt(self.reactor, self.actor_ref, spec, request, "tool", on_started=started)

    def _exited(self, message: ProcessExited) -> None:
        key = (message.run_id, message.task_key, message.attempt)
        flight = self.in_flight.get(key)
        if flight is None:
            return
        result = message.result
        flight.pooled = False
        if flight.cancelled and result.outcome is not ProcessOutcome.CANCELLED:
            result = replace(result, outcome=ProcessOutcome.CANCELLED)
        if message.phase == "tool":
            flight.tool_result = result
            verdict = self._tool_verdict(flight, result)
            if verdict is not None:
                self._finish(key, flight, verdict)
                return
            flight.checks = ordered_checks(flight.request.task.acceptance)
            self._next_check(key, flight)
            return
        check = flight.checks[flight.position][1]
        verdict = check_verdict(check.label, check_passed(check, result), result, failure_reason(check, result))
        if verdict is None:
            flight.position += 1
            self._next_check(key, flight)
            return
        gate_output = "" if verdict.state is TaskState.CANCELLED else describe_check_failure(
            check, result, _tail(flight.gate_log))
        self._finish(key, flight, verdict, gate_output=gate_output)

    def _tool_verdict(self, flight: _InFlight, result: ProcessResult) -> Verdict | None:
        """The verdict on the tool's process (None: it succeeded), from the facts around it."""
        cwd = flight.request.task.cwd or "."
        log_path = flight.request.log_path
        if result.succeeded:
            if self._returns_values and not callable_returned(log_path):
                return Verdict(TaskState.FAILED, ErrorClass.COMMAND_FAILED, NOT_RETURNED)
            return None
        return tool_verdict(result, cwd_exists=os.path.isdir(cwd), last_line=_last_line(log_path),
                            full_disk=_full_filesystem(log_path))

    def _next_check(self, key: tuple[str, str, int], flight: _InFlight) -> None:
        """Run the check at ``flight.position``, or finish COMPLETED when none is left. The
        Scheduler hears TaskValidating when a phase begins (static, then runtime)."""
        if flight.position >= len(flight.checks):
            self._finish(key, flight, COMPLETED)
            return
        request = flight.request
        index, check = flight.checks[flight.position]
        if flight.position == 0 or flight.checks[flight.position - 1][1].phase != check.phase:
            self.directory.tell(
                SCHEDULER,
                TaskValidating(request.run_id, request.task.key, request.attempt, utc_now_iso(), phase=Phase(check.phase)),
            )
        flight.gate_log = str(Path(request.log_path).with_suffix(f".check{index + 1}.log"))
        try:
            spec = check_spec(request.task, check, flight.gate_log)
        except ValueError as error:
            self._finish(key, flight, Verdict(TaskState.FAILED, ErrorClass.BAD_INPUT, str(error)))
            return
        start_for_attempt(self.reactor, self.actor_ref, spec, request, "check", index)

    def _finish(self, key: tuple[str, str, int], flight: _InFlight, verdict: Verdict, gate_output: str = "") -> None:
        del self.in_flight[key]
        self.directory.tell(
            SCHEDULER,
            attempt_finished(key, verdict, flight.started, tool=flight.tool_result, gate_output=gate_output,
                             result_json=_read_result(flight.request.log_path) if self._returns_values else ""),
        )
