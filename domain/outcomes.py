"""How an attempt ended, decided once for every executor.

Executors gather facts — how the tool's process ended, whether each acceptance check passed —
and ask this module for the verdict: the task state the attempt ends in, its error class, and
what the circuit breaker should make of it. Nothing here starts a process or reads a file.

The breaker rule: a circuit protects against a *tool* that is down (it could not start, it
crashed, its API or transport failed). A user's command exiting non-zero, a failed gate or a
timeout are the task's outcome: the tool worked, so they say nothing against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from domain.errors import ErrorClass
from domain.states import TaskState


class ProcessOutcome(StrEnum):
    """How a process ended: on its own, or stopped by us (and why), or never started."""

    EXITED = "exited"
    TIMEOUT = "timeout"
    RESOURCE_LIMIT = "resource_limit"
    CANCELLED = "cancelled"
    SPAWN_ERROR = "spawn_error"
    # Where it ran was lost: a Ray cluster that could not be reached, a node or worker that died
    # under it. Nothing is known of the command's own fate; the tool (the cluster) failed.
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """How a process ended.

    ``outcome``: ``EXITED`` (on its own; see ``exit_code``/``signal``), ``TIMEOUT``,
    ``RESOURCE_LIMIT``, ``CANCELLED`` (all three: the tree was killed by us), ``SPAWN_ERROR``
    (never started: ``pid`` is -1 and ``error`` says why) or ``LOST`` (the cluster or node running
    it went away; ``error`` says how). Otherwise exactly one of
    ``exit_code`` and ``signal`` is set (both None only if something else reaped the child).
    ``plan_fault`` (``SPAWN_ERROR`` only): it could not start because something the plan names
    is missing where it was to run (its cwd, its interpreter on a Ray node) — the plan's fault,
    not the tool's.
    """

    pid: int
    create_time: float
    exit_code: int | None
    signal: int | None
    outcome: ProcessOutcome
    duration_s: float
    max_rss_bytes: int  # peak sampled tree RSS, at least the reaped tree's ru_maxrss
    cpu_s: float  # user+sys of the process and the descendants it reaped
    error: str = ""
    plan_fault: bool = False

    def __post_init__(self) -> None:
        # Producers may pass the outcome's text; comparisons here are by identity.
        object.__setattr__(self, "outcome", ProcessOutcome(self.outcome))

    @property
    def succeeded(self) -> bool:
        return self.outcome is ProcessOutcome.EXITED and self.exit_code == 0


def describe_outcome(result: ProcessResult) -> str:
    """How a process ended, in a few words: ``exit code 1``, ``timed out after 1.0s ...``."""
    if result.outcome is ProcessOutcome.SPAWN_ERROR:
        return f"could not start: {result.error}"
    if result.outcome is ProcessOutcome.TIMEOUT:
        return f"timed out after {result.duration_s:.1f}s (process tree killed)"
    if result.outcome is ProcessOutcome.RESOURCE_LIMIT:
        return f"memory limit exceeded (peak RSS {result.max_rss_bytes // (1024 * 1024)} MiB; process tree killed)"
    if result.outcome is ProcessOutcome.CANCELLED:
        return "cancelled (process tree killed)"
    if result.outcome is ProcessOutcome.LOST:
        return f"lost: {result.error}"
    if result.signal is not None:
        return f"killed by signal {result.signal}"
    return f"exit code {result.exit_code}"


class Evidence(StrEnum):
    """What an attempt's end says about its tool, for the circuit breaker."""

    WORKED = "worked"  # the tool ran: success, or a failure that is the task's own
    BROKEN = "broken"  # the tool is down: it could not run, crashed, or its API failed
    NONE = "none"  # nothing either way: cancelled, or interrupted by our own stop


# Error classes that mean "the tool is down", never "the task failed".
TOOL_FAILURES = frozenset({ErrorClass.TOOL_ERROR, ErrorClass.CRASH, ErrorClass.TRANSIENT})
_NO_EVIDENCE = frozenset({ErrorClass.CANCELLED, ErrorClass.INTERRUPTED, ErrorClass.TIMEOUT})


@dataclass(frozen=True, slots=True)
class Verdict:
    """How an attempt ends: its task state, error class (None on success) and a message."""

    state: TaskState
    error_class: ErrorClass | None
    message: str

    @property
    def evidence(self) -> Evidence:
        return breaker_evidence(self.error_class)


COMPLETED = Verdict(TaskState.COMPLETED, None, "")


def breaker_evidence(error_class: ErrorClass | None) -> Evidence:
    """What an attempt that ended with ``error_class`` (None: success) says about its tool."""
    if error_class is None:
        return Evidence.WORKED
    if error_class in TOOL_FAILURES:
        return Evidence.BROKEN
    if error_class in _NO_EVIDENCE:
        return Evidence.NONE
    return Evidence.WORKED


def tool_verdict(result: ProcessResult, cwd_exists: bool = True, last_line: str = "",
                 full_disk: str = "") -> Verdict | None:
    """The verdict on a tool process that did not succeed, or None when it did (the
    acceptance checks decide next).

    A process that could not start is bad input when its working directory is missing
    (``cwd_exists`` False) or the result says the plan is at fault (``plan_fault``: never
    retried) and a tool failure otherwise (executable missing, no memory,
    too many processes). A non-zero exit or a signal the process did not get from us is the
    command's own failure. A process whose cluster or node was lost (``LOST``) is a tool
    failure. ``last_line`` (the lines of the tool's output that say why, see
    :mod:`domain.failure_lines`) is added to the message.
    ``full_disk`` names the full filesystem the tool's output went to, when it is full: then
    that is why it failed (a resource limit, retried like one).
    """
    if result.succeeded:
        return None
    detail = describe_outcome(result)
    said = f"{detail}: {last_line}" if last_line else detail
    outcome = result.outcome
    if outcome is ProcessOutcome.TIMEOUT:
        return Verdict(TaskState.TIMEOUT, ErrorClass.TIMEOUT, said)
    if outcome is ProcessOutcome.RESOURCE_LIMIT:
        return Verdict(TaskState.FAILED, ErrorClass.RESOURCE_LIMIT, said)
    if outcome is ProcessOutcome.CANCELLED:
        return Verdict(TaskState.CANCELLED, ErrorClass.CANCELLED, detail)
    if outcome is ProcessOutcome.LOST:
        # The cluster, not the command: evidence against the adapter, so its circuit can open
        # and work falls back; retried like any tool failure.
        return Verdict(TaskState.FAILED, ErrorClass.TOOL_ERROR, detail)
    if full_disk:
        return Verdict(TaskState.FAILED, ErrorClass.RESOURCE_LIMIT,
                       f"{detail}: its output could not be written: no space left on {full_disk}")
    if outcome is ProcessOutcome.SPAWN_ERROR:
        plans_fault = result.plan_fault or not cwd_exists
        return Verdict(TaskState.FAILED, ErrorClass.BAD_INPUT if plans_fault else ErrorClass.TOOL_ERROR, detail)
    return Verdict(TaskState.FAILED, ErrorClass.COMMAND_FAILED, said)


def check_verdict(label: str, passed: bool, result: ProcessResult, reason: str) -> Verdict | None:
    """The verdict on an acceptance check, or None when it passed (the next one runs).

    Every way a check does not pass — a failing exit code, a timeout, a kill — is a gate
    failure, except a cancellation (the whole attempt was cancelled) and a check that could not
    start at all (nothing the task can fix: bad input). ``reason`` says why in a few words.
    """
    if passed:
        return None
    if result.outcome is ProcessOutcome.CANCELLED:
        return Verdict(TaskState.CANCELLED, ErrorClass.CANCELLED, describe_outcome(result))
    if result.outcome is ProcessOutcome.SPAWN_ERROR:
        return Verdict(TaskState.FAILED, ErrorClass.BAD_INPUT, f"acceptance check {label!r} could not start: {result.error}")
    return Verdict(TaskState.FAILED, ErrorClass.GATE, f"acceptance check {label!r} failed: {reason}")
