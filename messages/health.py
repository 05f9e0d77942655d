"""Messages about the runtime's own health that change what the Scheduler may do."""

from __future__ import annotations

from dataclasses import dataclass

from messages.base import Message


@dataclass(frozen=True, slots=True)
class LedgerStalled(Message):
    """Told by the Ledger to the Scheduler when a commit could not be made (the database is
    locked, read-only or its disk full) and it is retrying: nothing new may start until
    :class:`LedgerRecovered`.

    ``reason``: why, in a few words (e.g. ``locked by another process``).
    ``since_s``: how long the ledger has been waiting, in seconds."""

    reason: str
    since_s: float


@dataclass(frozen=True, slots=True)
class LedgerRecovered(Message):
    """Told by the Ledger to the Scheduler once a stalled commit went through."""
