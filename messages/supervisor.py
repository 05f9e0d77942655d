"""Messages of the Supervisor: the ones it is asked, and the ones it sends itself by timer."""

from __future__ import annotations

from dataclasses import dataclass

from messages.base import Message


@dataclass(frozen=True, slots=True)
class StartChildren(Message):
    """Asked once by the runtime: the reply (the children's names) comes when every child is
    running."""


@dataclass(frozen=True, slots=True)
class SupervisorTick(Message):
    """The heartbeat interval elapsed: ping every child, look for silent ones."""


@dataclass(frozen=True, slots=True)
class RestartDue(Message):
    """The backoff before restarting child ``name`` elapsed; ``reason`` is why it went down."""

    name: str
    reason: str
