"""Terminal output: progress lines and tables, coloured only on a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from domain.shown import CACHED, is_allowed_failure, progress_shown_state
from domain.states import FAILURE_ALLOWED, TaskState

if TYPE_CHECKING:
    from messages import RunProgress

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "dim": "2", "bold": "1"}

_STATE_STYLE = {
    TaskState.COMPLETED.value: ("✓", "green"),
    TaskState.FAILED.value: ("✗", "red"),
    TaskState.TIMEOUT.value: ("⏱", "red"),
    TaskState.BLOCKED.value: ("⊘", "yellow"),
    TaskState.CANCELLED.value: ("⊘", "yellow"),
    TaskState.IN_PROGRESS.value: ("▶", "cyan"),
    TaskState.RETRY_WAIT.value: ("↻", "yellow"),
    TaskState.AWAITING_APPROVAL.value: ("?", "yellow"),
    "FIXING": ("↻", "yellow"),
    "RETRIED": ("↻", "yellow"),
}


# Run-wide notices (no task): what the foreground says, then the notice's detail.
_RUN_NOTICES = {"WAITING": "", "PAUSED": "paused: no new task starts", "RESUMED": "resumed"}
# Steps on the way that the foreground display does not print (the ledger has them all).
_QUIET_STATES = frozenset({TaskState.PENDING.value, TaskState.QUEUED.value, TaskState.VALIDATING.value})


def use_colour(stream=sys.stdout) -> bool:
    return stream.isatty() and os.environ.get("NO_COLOR") is None


def paint(text: str, colour: str, enabled: bool) -> str:
    return f"\033[{_COLOURS[colour]}m{text}\033[0m" if enabled else text


def progress_line(event: RunProgress, colour: bool, run_id: str = "") -> str | None:
    if not event.run_id and event.state == "HUNG":
        return f"  {paint('!', 'red', colour)} actor {event.task_key} missed heartbeats: {event.detail}"
    if not event.task_key and event.state in _RUN_NOTICES:
        return f"  {paint('…', 'yellow', colour)} {_RUN_NOTICES[event.state]}{event.detail}"
    if not event.task_key or event.state in _QUIET_STATES:
        return None
    symbol, tint = _STATE_STYLE.get(event.state, ("·", "dim"))
    label, detail = progress_shown_state(event.state, event.detail), event.detail
    if label == CACHED:
        symbol = "↺"  # an earlier run's result, reused
    elif is_allowed_failure(label):
        detail, tint = detail.removeprefix(FAILURE_ALLOWED).strip(), "yellow"
    width = len(str(event.total))
    counter = f"[{event.done:>{width}}/{event.total}]"
    text = f"  {counter} {paint(symbol, tint, colour)} {event.task_key}"
    if event.state not in (TaskState.IN_PROGRESS.value, TaskState.COMPLETED.value):
        text += f"  {paint(label, tint, colour)}"
    if detail and event.state != TaskState.IN_PROGRESS.value:
        text += f"  {paint(detail, 'dim', colour)}"
    if event.state == TaskState.AWAITING_APPROVAL.value:
        text += f"\n        approve: orchestrate approve {event.run_id} {event.task_key}   reject: orchestrate reject ..."
    return text


def existing_logs(log_path: str) -> list[str]:
    """An attempt's log and the logs of its acceptance checks beside it
    (``<task>.check<N>.log``), those that exist, in that order."""
    if not log_path:
        return []
    path = Path(log_path)
    stem = path.with_suffix("")
    return [str(p) for p in [path, *sorted(stem.parent.glob(f"{stem.name}.check*.log"))] if p.exists()]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
