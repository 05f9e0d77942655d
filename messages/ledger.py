"""Messages to the Ledger, the only writer of the database.

Each is one durable fact. The Ledger applies a burst of them in one transaction (group
commit), in the order it received them. ``at`` is an ISO-8601 UTC timestamp taken by the
sender when the fact happened, not when it was written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from domain.errors import ErrorClass
from domain.outcomes import Verdict
from domain.plan import Plan
from domain.results import ResultRef
from domain.states import RunState, TaskState, WorkstreamState
from messages.base import Message


@dataclass(frozen=True, slots=True)
class TransitionRun(Message):
    """Run ``run_id`` moves to ``to_state`` (checked against the run state machine);
    ``reason`` is shown in ``runs show``."""

    run_id: str
    to_state: RunState
    at: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TransitionWorkstream(Message):
    """Workstream ``ws_id`` of ``run_id`` moves to ``to_state`` (checked)."""

    run_id: str
    ws_id: str
    to_state: WorkstreamState
    at: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TransitionTask(Message):
    """Task ``task_key`` (``ws/task``) of ``run_id`` moves to ``to_state`` (checked).
    ``attempt`` is the attempt it concerns (0: none), ``adapter`` the executor running it."""

    run_id: str
    task_key: str
    to_state: TaskState
    at: str
    attempt: int = 0
    reason: str = ""
    adapter: str = ""


@dataclass(frozen=True, slots=True)
class AttemptStarted(Message):
    """A tool began working on a task; ``pid``/``pid_create_time`` identify its process.

    Executors tell it to the Scheduler, which forwards it to the Ledger after the task's
    IN_PROGRESS transition."""

    run_id: str
    ws_id: str
    task_key: str
    attempt: int
    adapter: str
    started_at: str
    pid: int | None = None
    pid_create_time: float | None = None
    log_path: str = ""


@dataclass(frozen=True, slots=True)
class AttemptFinished(Message):
    """The end of an attempt, as judged by :mod:`domain.outcomes`.

    ``status``: the task state the attempt ended in (COMPLETED, FAILED, TIMEOUT or CANCELLED);
    ``error_class``: why it failed (None on success); ``message``: what to tell the user.
    ``exit_code``, ``max_rss_bytes``, ``cpu_s``: of its (last) tool process, when it had one;
    ``duration_s``: wall time of the whole attempt; ``gate_output``: the failing acceptance
    check's account; ``result_json``: what a python callable returned (or a shell command wrote
    to ``$ORCHESTRATE_OUTPUT``), as JSON, or ``result_file``: the file holding a result too large
    to keep inline; ``outputs_json``: the hashes of its ``files_out`` (``{path: sha256}``);
    ``cache_key``: its cache key; ``cached_from``: ``run/task/attempt`` whose result a cached
    attempt reused; ``tokens_in``, ``tokens_out``, ``cost_usd``: what an agent attempt used,
    when its tool said.

    Executors tell it to the Scheduler, which decides what follows and forwards it to the
    Ledger."""

    run_id: str
    task_key: str
    attempt: int
    status: TaskState
    completed_at: str
    exit_code: int | None = None
    duration_s: float | None = None
    max_rss_bytes: int | None = None
    cpu_s: float | None = None
    error_class: ErrorClass | None = None
    message: str = ""
    gate_output: str = ""
    result_json: str = ""
    result_file: str = ""
    outputs_json: str = ""
    cache_key: str = ""
    cached_from: str = ""
    # Agent attempts: what the tool reported using over all its rounds (None: not reported).
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None

    @property
    def verdict(self) -> Verdict:
        return Verdict(self.status, self.error_class, self.message)

    @classmethod
    def of(cls, run_id: str, task_key: str, attempt: int, verdict: Verdict, at: str,
           duration_s: float | None = None, result: ResultRef | None = None, cache_key: str = "") -> AttemptFinished:
        """An attempt's end that no executor reported (lost with its executor, a merge step)."""
        return cls(run_id, task_key, attempt, verdict.state, at, duration_s=duration_s,
                   error_class=verdict.error_class, message=verdict.message,
                   result_json=result.text if result else "", result_file=result.path if result else "",
                   cache_key=cache_key)


@dataclass(frozen=True, slots=True)
class ErrorObserved(Message):
    """An error to count: identical (run, ws, step, signature) increments ``count``.
    ``error_code`` is its class; ``context_json`` extra detail (a gate's output)."""

    run_id: str
    ws_id: str
    step_name: str
    error_code: ErrorClass
    signature: str
    message: str
    at: str
    context_json: str = ""


@dataclass(frozen=True, slots=True)
class EventObserved(Message):
    """A line of the ledger's event log: ``event_type`` (``CIRCUIT_OPEN``, ``TASK_STARTED`` …),
    what it concerns (run, workstream, task; each optional) and a JSON payload."""

    event_type: str
    at: str
    run_id: str | None = None
    ws_id: str | None = None
    task_key: str | None = None
    payload_json: str = ""


@dataclass(frozen=True, slots=True)
class RoutingDecided(Message):
    """Where the Router sent a task: ``chosen`` among ``candidates``, and why."""

    run_id: str
    task_key: str
    candidates: tuple[str, ...]
    chosen: str
    reason: str
    at: str


@dataclass(frozen=True, slots=True)
class PatchRecorded(Message):
    """The files an attempt changed in its worktree (``files_json``: a list of
    ``{"status", "path", ...}``) and its patch, kept at ``patch_path``."""

    run_id: str
    ws_id: str
    task_key: str
    attempt: int
    base_commit: str
    head_commit: str
    files_json: str
    patch_sha256: str
    patch_path: str
    at: str


@dataclass(frozen=True, slots=True)
class RuntimeBeat(Message):
    """A runtime is alive (``at``), or stopped (``stopped``, with ``reason``); the first beat
    of ``runtime_id`` (``at == started_at``) records who it is. Kept in ``runtime_heartbeats``
    so ``health`` can answer from the ledger when no runtime is listening."""

    runtime_id: str
    pid: int
    hostname: str
    state_dir: str
    started_at: str
    at: str
    stopped: bool = False
    reason: str = ""
    db_write_json: str = ""  # the runtime's commit times so far (domain.metrics.Histogram.as_json)


@dataclass(frozen=True, slots=True)
class AuditRecorded(Message):
    """A state-changing command and its result, for the audit log: who (``uid``, ``user``,
    ``via`` socket/cli/web), ``command`` and its ``args_json``, the run it concerned (if any),
    whether it was ``accepted`` and the ``message`` (a refusal's sentence)."""

    at: str
    uid: int
    user: str
    via: str
    command: str
    args_json: str
    run_id: str | None
    accepted: bool
    message: str


@dataclass(frozen=True, slots=True)
class CreateRun(Message):
    """Asked (not told): create a run of ``plan`` (immutable, shared, never copied) in one
    transaction; the reply is its id. ``request_json``: the execution request as JSON text.
    ``run_id``: the id to give it (None: a new one)."""

    request_json: str
    plan: Plan
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReplacePlan(Message):
    """Asked (not told): make ``plan`` the plan of run ``run_id`` (``execute --plan``): its
    snapshot, request and task definitions, an event naming the ``changed`` tasks, and the
    tasks to ``rerun`` (ended ones, completed or not) back to PENDING — in one transaction, so
    the run never holds the new plan with a changed task still counted done.
    ``request_json``: the execution request of the new plan, as JSON text."""

    run_id: str
    request_json: str
    plan: Plan
    changed: tuple[str, ...] = ()
    rerun: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CommitDue(Message):
    """Told by the timer to the Ledger: the commit interval of the oldest buffered op (or the
    backoff after a refused commit) has passed."""


@dataclass(frozen=True, slots=True)
class AcquireLease(Message):
    """Asked (not told): take run ``run_id``'s lease for this runtime (see
    :mod:`domain.leases`) and keep renewing it; the reply is a :class:`LeaseReply`."""

    run_id: str


@dataclass(frozen=True, slots=True)
class LeaseReply(Message):
    """Whether the lease of ``run_id`` is now this runtime's. ``note`` is one line for the user:
    who drives the run (refused), whose expired lease was taken over, or ``""``."""

    run_id: str
    taken: bool
    note: str = ""


@dataclass(frozen=True, slots=True)
class ReleaseLease(Message):
    """Told: the run finished here; commit what is buffered, then end its lease."""

    run_id: str


@dataclass(frozen=True, slots=True)
class RenewLeasesDue(Message):
    """Told by the timer to the Ledger: time to renew the leases this runtime holds."""


@dataclass(frozen=True, slots=True)
class Flush(Message):
    """Asked (not told): the reply comes after everything received before it is committed."""


LedgerOp = Union[
    TransitionRun,
    TransitionWorkstream,
    TransitionTask,
    AttemptStarted,
    AttemptFinished,
    ErrorObserved,
    EventObserved,
    RoutingDecided,
    PatchRecorded,
    RuntimeBeat,
    AuditRecorded,
]


@dataclass(frozen=True, slots=True)
class LedgerOps(Message):
    """Several ops told at once, applied in order as if told one by one: the Scheduler sends
    what one decision produced (a task's transition, its attempt row, its events) as one message."""

    ops: tuple[LedgerOp, ...]  # never empty
