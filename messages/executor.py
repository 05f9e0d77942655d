"""Messages an executor tells itself when a process it started ends."""

from __future__ import annotations

from dataclasses import dataclass

from domain.outcomes import ProcessResult
from messages.base import Message


@dataclass(frozen=True, slots=True)
class ProcessExited(Message):
    """``phase`` is ``tool`` for the task's own process, ``check`` for acceptance check
    number ``check_index``."""

    run_id: str
    task_key: str
    attempt: int
    phase: str
    result: ProcessResult
    check_index: int = -1


@dataclass(frozen=True, slots=True)
class RemoteStarted(Message):
    """A Ray node began running the attempt: ``node`` is Ray's node id, ``ip`` its address."""

    run_id: str
    task_key: str
    attempt: int
    node: str
    ip: str
