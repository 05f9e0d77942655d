"""Exceptions of the state layer, each naming what was refused in one line."""

from __future__ import annotations


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or opened; the message shows the URL, password masked."""


class DuplicateRun(ValueError):
    """A run with this id already exists; nothing of the new run was written."""


class UnknownEntity(LookupError):
    """An op named a run, task or attempt the database does not hold."""


class DuplicateAttempt(ValueError):
    """An attempt number of a task was started twice; the first record stands."""


class LeaseLost(RuntimeError):
    """Another runtime took over a run this one was writing to (its lease had expired); the
    writes to that run were refused."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was taken over by another runtime (this runtime's lease expired)")
        self.run_id = run_id
