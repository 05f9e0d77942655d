"""Messages to the Ledger, the only writer of the database.

Each is one durable fact. The Ledger applies a burst of them in one transaction (group
commit), in the order it received them. ``at`` is an ISO-8601 UTC timestamp taken by the
sender when the fact happened, not when it was written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from messages.base import Message


@dataclass(frozen=True, slots=True)
class TransitionRun(Message):
    run_id: str
    to_state: str
    at: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TransitionWorkstream(Message):
    run_id: str
    ws_id: str
    to_state: str
    at: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TransitionTask(Message):
    run_id: str
    task_key: str
    to_state: str
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
    """The end of an attempt. ``status`` is the task state it ended the attempt in
    (COMPLETED, FAILED, TIMEOUT or CANCELLED).

    Executors tell it to the Scheduler, which decides what follows and forwards it to the
    Ledger."""

    run_id: str
    task_key: str
    attempt: int
    status: str
    completed_at: str
    exit_code: int | None = None
    duration_s: float | None = None
    max_rss_bytes: int | None = None
    cpu_s: float | None = None
    error_class: str = ""
    message: str = ""
    gate_output: str = ""
    result_json: str = ""  # what a python callable returned, as JSON, when it is JSON-able


@dataclass(frozen=True, slots=True)
class ErrorObserved(Message):
    """An error to count: identical (run, ws, step, signature) increments ``count``."""

    run_id: str
    ws_id: str
    step_name: str
    error_code: str
    signature: str
    message: str
    at: str
    context_json: str = ""


@dataclass(frozen=True, slots=True)
class EventObserved(Message):
    event_type: str
    at: str
    run_id: str | None = None
    ws_id: str | None = None
    task_key: str | None = None
    payload_json: str = ""


@dataclass(frozen=True, slots=True)
class RoutingDecided(Message):
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
class CreateRun(Message):
    """Asked (not told): create a run in one transaction; the reply is its id.

    ``request_json`` and ``plan_json`` are JSON texts (messages carry immutable values)."""

    request_json: str
    plan_json: str
    run_id: str | None = None


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
]
