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

import json
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
from adapters.files import hash_files
from adapters.results import collect, write_inputs
from adapters.tools import PythonAdapter, ShellAdapter, ToolAdapter
from domain.cache import cache_key
from domain.errors import ErrorClass
from domain.failure_lines import summary
from domain.outcomes import (
    COMPLETED,
    ProcessOutcome,
    ProcessResult,
    Verdict,
    check_verdict,
    tool_verdict,
)
from domain.plan import AcceptanceCheck
from domain.results import DEFAULT_INLINE_LIMIT, ResultRef
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
    cache_key: str = ""  # its key, with files_in as they were when it started
    files_in: dict[str, str] = field(default_factory=dict)  # their hashes then
    announced: bool = False  # the Scheduler heard AttemptStarted (executors that announce late)


def _tail(path: str, limit: int = GATE_OUTPUT_LIMIT) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _signal(path: str, kind: str) -> str:
    """The lines of a failed tool's or check's log that say why (see
    :mod:`domain.failure_lines`), as one line."""
    return summary(_tail(path, 16 * 1024), kind)


def _full_filesystem(path: str) -> str:
    """The directory of ``path`` when its filesystem has (next to) no space left, else ""."""
    directory = os.path.dirname(path) or "."
    try:
        stats = os.statvfs(directory)
    except OSError:
        return ""
    return directory if stats.f_bavail * stats.f_frsize < FULL_DISK_BYTES else ""


class ExecutorActor(SupervisedActor):
    def __init__(
        self, name: str, directory: Directory, adapter_name: str, adapter: ToolAdapter, reactor: ProcessReactor,
        pool: WorkerPool | None = None, results_dir: str = "", inline_limit: int = DEFAULT_INLINE_LIMIT,
    ) -> None:
        super().__init__(name, directory)
        self.adapter_name = adapter_name
        self.adapter = adapter
        self.reactor = reactor
        self.pool = pool  # python workers; None: every python task gets a fresh interpreter
        self.in_flight: dict[tuple[str, str, int], _InFlight] = {}
        self._returns_values = isinstance(adapter, PythonAdapter)
        # A callable returns its result; a shell command may write one to $ORCHESTRATE_OUTPUT.
        self._has_results = self._returns_values or isinstance(adapter, ShellAdapter)
        # Results larger than ``inline_limit`` bytes go to files under ``results_dir/<run>``.
        self.results_dir = results_dir
        self.inline_limit = inline_limit

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
    def _track(self, request: ExecuteTask) -> _InFlight:
        """Start keeping ``request``'s attempt in flight (its clock starts now)."""
        flight = self.in_flight[(request.run_id, request.task.key, request.attempt)] = _InFlight(
            request=request, started=time.monotonic())
        if request.cache_basis:
            # What it reads, as it starts: hashed later, the key could vouch for content it never saw.
            flight.files_in, _ = hash_files(request.task.cwd or ".", request.task.files_in)
            flight.cache_key = cache_key(request.cache_basis, flight.files_in)
        return flight

    def _start(self, request: ExecuteTask) -> None:
        key = (request.run_id, request.task.key, request.attempt)
        flight = self._track(request)
        directory, adapter = self.directory, self.adapter_name

        def started(pid: int, create_time: float) -> None:
            # On a spawner or the pool's thread, before the process (or the worker's reply) can
            # be reported: the Scheduler always hears AttemptStarted before AttemptFinished.
            directory.tell(SCHEDULER, attempt_started(request, adapter, pid, create_time))

        if isinstance(self.adapter, PythonAdapter):
            if self.pool is not None and self.adapter.uses_worker(request.task):
                flight.pooled = True
                call = self.adapter.call_spec(request.task, request.log_path, request.inputs)
                start_for_attempt(self.pool, self.actor_ref, call, request, "tool", on_started=started)
                return
            spec = self.adapter.process_spec(request.task, request.log_path, request.inputs)
        elif isinstance(self.adapter, ShellAdapter):
            inputs_file = ""
            if request.inputs:
                inputs_file = request.log_path + ".inputs.json"
                try:
                    write_inputs(inputs_file, request.inputs)
                except (OSError, ValueError) as error:
                    self.directory.tell(SCHEDULER, attempt_started(request, adapter))
                    self._finish(key, flight, Verdict(TaskState.FAILED, ErrorClass.TOOL_ERROR,
                                                      f"could not write its inputs to {inputs_file}: {error}"))
                    return
            spec = self.adapter.process_spec(request.task, request.log_path, inputs_file)
        else:
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
        passed = check_passed(check, result)
        reason = failure_reason(check, result)
        if not passed and (said := _signal(flight.gate_log, check.kind)):
            reason = f"{reason}: {said}"
        verdict = check_verdict(check.label, passed, result, reason)
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
            if self._returns_value(flight.request) and not callable_returned(log_path):
                return Verdict(TaskState.FAILED, ErrorClass.COMMAND_FAILED, NOT_RETURNED)
            return None
        return tool_verdict(result, cwd_exists=os.path.isdir(cwd), last_line=_signal(log_path, flight.request.task.tool),
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
        self.in_flight.pop(key, None)
        request = flight.request
        result, outputs = ResultRef(), ""
        if self._has_result(request) and verdict.state is not TaskState.CANCELLED:
            collected = collect(request.log_path, os.path.join(self.results_dir, request.run_id), request.task.key,
                                request.attempt, self.inline_limit, validate=not self._returns_value(request))
            result = collected.ref
            if collected.error and verdict.state is TaskState.COMPLETED:
                verdict = Verdict(TaskState.FAILED, ErrorClass.COMMAND_FAILED,
                                  f"task {request.task.key}: {collected.error}")
        if verdict.state is TaskState.COMPLETED and request.task.files_out:
            verdict, outputs = self._outputs(request)
        verdict = self._told(key, verdict)
        self.directory.tell(
            SCHEDULER,
            attempt_finished(key, verdict, flight.started, tool=flight.tool_result, gate_output=gate_output,
                             result_json=result.text, result_file=result.path, outputs_json=outputs,
                             cache_key=self._key_that_stands(flight) if verdict.state is TaskState.COMPLETED else ""),
        )

    @staticmethod
    def _key_that_stands(flight: _InFlight) -> str:
        """The attempt's key, unless a file it reads changed while it ran (another task, or a
        person, wrote it): what it produced then matches neither version, so no later run may
        reuse it under either."""
        if not flight.cache_key:
            return ""
        task = flight.request.task
        now, _ = hash_files(task.cwd or ".", task.files_in)
        if now == flight.files_in:
            return flight.cache_key
        changed = sorted(path for path in set(now) | set(flight.files_in) if now.get(path) != flight.files_in.get(path))
        log.warning("files_in_changed_while_running", run_id=flight.request.run_id, task=task.key,
                    attempt=flight.request.attempt, changed=changed[:10], consequence="not cached")
        return ""

    def _told(self, key: tuple[str, str, int], verdict: Verdict) -> Verdict:
        """The attempt's final ``verdict`` as the Scheduler is told it (executors add where it ran)."""
        return verdict

    def _returns_value(self, request: ExecuteTask) -> bool:
        """Whether ``request``'s tool is a callable, whose return value (or its absence) counts."""
        return self._returns_values

    def _has_result(self, request: ExecuteTask) -> bool:
        """Whether ``request``'s tool may leave a result beside its log (see adapters.results)."""
        return self._has_results

    @staticmethod
    def _outputs(request: ExecuteTask) -> tuple[Verdict, str]:
        """The verdict on a task that succeeded, now that its ``files_out`` are looked at, and
        their hashes as JSON: a pattern that matches no file fails it (nothing to cache)."""
        task = request.task
        hashes, empty = hash_files(task.cwd or ".", task.files_out)
        if empty:
            where = ", ".join(f"files_out[{task.files_out.index(p)}] {p!r}" for p in empty)
            return Verdict(TaskState.FAILED, ErrorClass.BAD_INPUT,
                           f"task {task.key}: {where} matched no file after it succeeded "
                           f"(in {task.cwd}); fix the pattern or make the task write it"), ""
        return COMPLETED, json.dumps(hashes, sort_keys=True, separators=(",", ":"))
