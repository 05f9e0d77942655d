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
