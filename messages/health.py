"""Messages about the runtime's own health: the Ledger telling the Scheduler that the database
has stopped taking writes, and that it takes them again.

Protocol (the Ledger is the only sender; the Scheduler the only receiver):

- :class:`LedgerStalled` is told when a commit fails for a retryable cause (the database is
  locked by another process, the disk is full, the database is read-only or reports an I/O
  error) and the Ledger was not already stalled; from then on the Ledger keeps every op it
  received and retries with backoff. The Scheduler should start no new attempt until
  :class:`LedgerRecovered`: every attempt started while stalled is work whose record may
  never be written (running attempts may finish; their records wait in the Ledger).
- :class:`LedgerRecovered` is told after the first successful commit following a
  :class:`LedgerStalled`; everything the Ledger had received up to that commit is durable.
- If the stall outlasts the runtime's limit, no :class:`LedgerRecovered` follows: the runtime
  stops (exit 3) and the run is resumed later.
"""

from __future__ import annotations

from dataclasses import dataclass

from messages.base import Message


@dataclass(frozen=True, slots=True)
class LedgerStalled(Message):
    """The database stopped taking the Ledger's writes.

    ``cause``: why, in words for a person: "locked by another process", "disk full",
    "read-only" or "disk I/O error". ``database``: the database file (or masked URL).
    ``pending``: how many ops the Ledger holds unwritten when it says so.
    """

    cause: str
    database: str
    pending: int


@dataclass(frozen=True, slots=True)
class LedgerRecovered(Message):
    """The Ledger committed again after a stall.

    ``stalled_s``: how long the stall lasted, in seconds. ``written``: ops committed by the
    commit that ended it.
    """

    stalled_s: float
    written: int
