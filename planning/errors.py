"""Errors of plan input, with locations a user can act on.

Loading reports every problem it finds at once, so :class:`PlanError` carries a tuple of
:class:`PlanIssue` rather than a single message; its ``str`` is ready to print to a terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PlanIssue:
    """One problem: the file it is in, where in that file (``$.tasks[1].timeout_s``), and why.

    ``json_path`` is ``$`` when the problem concerns the whole file (or the whole plan).
    """

    file: str
    json_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.json_path}: {self.message}"


class PlanError(Exception):
    """A plan cannot be used; ``issues`` lists every problem found, in report order."""

    def __init__(self, issues: Iterable[PlanIssue]) -> None:
        self.issues: tuple[PlanIssue, ...] = tuple(issues)
        if not self.issues:
            raise ValueError("PlanError needs at least one issue")
        super().__init__("\n".join(str(issue) for issue in self.issues))


class RequestInvalid(ValueError):
    """A document does not match its schema; ``issues`` holds ``(json_path, message)`` pairs."""

    def __init__(self, issues: Iterable[tuple[str, str]]) -> None:
        self.issues: tuple[tuple[str, str], ...] = tuple(issues)
        if not self.issues:
            raise ValueError("RequestInvalid needs at least one issue")
        super().__init__("\n".join(f"{path}: {message}" for path, message in self.issues))


class SchemaMissing(RuntimeError):
    """A schema file is absent or unreadable; the runtime must refuse work (safe mode)."""
