"""The foreground's live view on a terminal: a panel grouped by workstream, drawn with rich.

:class:`Board` is the view's model. The runtime's event thread feeds it every progress event
(:meth:`Board.apply`: a few dictionary updates under a lock, nothing drawn), and rich's
refresh thread draws it four times a second from a snapshot (:meth:`Board.render`), so a run
of thousands of short tasks costs the view the same as a run of ten: drawing never happens
per event. What it shows: the run's progress bar and counts; per workstream a bar and its
tasks counted by state; the tasks running now with their elapsed time; what waits and why
(awaiting approval, a retry's backoff, an open circuit, a pause); failures with their log.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cli.output import existing_logs
from domain.run_core import attempt_log_path
from domain.shown import CACHED, is_allowed_failure, progress_shown_state, stored_state
from domain.states import FAILURE_ALLOWED, TERMINAL_TASK_STATES, TaskState
from messages import RunProgress

_TERMINAL = frozenset(state.value for state in TERMINAL_TASK_STATES)
_TASK_STATES = frozenset(state.value for state in TaskState)
_RUNNING = frozenset({TaskState.IN_PROGRESS.value, TaskState.VALIDATING.value})
_FAILED = frozenset({TaskState.FAILED.value, TaskState.TIMEOUT.value})
_STYLE = {
    TaskState.COMPLETED.value: "green", TaskState.FAILED.value: "red", TaskState.TIMEOUT.value: "red",
    TaskState.BLOCKED.value: "yellow", TaskState.CANCELLED.value: "yellow", TaskState.IN_PROGRESS.value: "cyan",
    TaskState.VALIDATING.value: "cyan", TaskState.RETRY_WAIT.value: "yellow",
    TaskState.AWAITING_APPROVAL.value: "magenta", CACHED: "green",
}
# How much of a big run the panel lists; the counts above always cover everything.
MAX_WORKSTREAMS = 12
MAX_RUNNING = 8
MAX_WAITING = 6
MAX_FAILURES = 5
REFRESH_PER_SECOND = 4


@dataclass(slots=True)
class _Failure:
    task: str
    state: str
    detail: str
    logs: list[str]


@dataclass(slots=True)
class Board:
    """What the live panel shows of run ``run_id``; fed by :meth:`apply`, drawn by
    :meth:`render` (both thread-safe). ``states``: tasks by shown state (see
    :mod:`domain.shown`: allowed failures and reused results told apart)."""

    run_id: str
    log_dir: str
    states: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    total: int = 0
    paused: bool = False
    waiting: str = ""  # a run-wide wait (every adapter it needs is unavailable)
    ws_counts: dict[str, Counter[str]] = field(default_factory=dict)
    running_since: dict[str, float] = field(default_factory=dict)
    waits: dict[str, str] = field(default_factory=dict)
    failures: list[_Failure] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    finished: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for key, state in self.states.items():
            self.ws_counts.setdefault(_workstream(key), Counter())[state] += 1
        self.total = len(self.states)
        # Until the first event: a resumed run keeps only its completed tasks (the rest run again).
        self.done = sum(1 for state in self.states.values() if stored_state(state) == TaskState.COMPLETED.value)

    # -- fed on the event thread -------------------------------------------------------------------
    def apply(self, event: RunProgress) -> None:
        if event.run_id and event.run_id != self.run_id:
            return
        with self._lock:
            if event.task_key or event.finished_run_state:
                # The run core's counter only grows (a retry adds to both sides).
                self.done, self.total = event.done, event.total
            if event.finished_run_state:
                self.finished = event.finished_run_state
                return
            if not event.task_key or not event.run_id:
                self._notice(event)  # run-wide, or about the runtime itself (a hung actor)
                return
            if event.state not in _TASK_STATES:
                if event.state == "RETRIED":
                    self.notices.append(f"↻ {event.task_key} retried {event.detail}")
                elif event.state == "FIXING":
                    self.waits[event.task_key] = f"fixing: {event.detail}"
                return
            self._move(event)

    def _notice(self, event: RunProgress) -> None:
        if event.state == "PAUSED":
            self.paused = True
            self.notices.append("paused: no new task starts")
        elif event.state == "RESUMED":
            self.paused = False
            self.waiting = ""
            self.notices.append("resumed")
        elif event.state == "WAITING":
            self.waiting = event.detail
        elif event.state == "WARNING":
            self.notices.append(f"! {event.detail}")
        elif event.state == "HUNG":
            self.notices.append(f"! actor {event.task_key} missed heartbeats: {event.detail}")
        del self.notices[:-3]

    def _move(self, event: RunProgress) -> None:
        key, state = event.task_key, event.state
        previous = self.states.get(key)
        if previous is None:
            return
        shown = progress_shown_state(state, event.detail)
        counts = self.ws_counts[_workstream(key)]
        counts[previous] -= 1
        counts[shown] += 1
        self.states[key] = shown
        if state == TaskState.IN_PROGRESS.value:
            self.running_since[key] = time.monotonic()
        elif state not in _RUNNING and state != TaskState.AWAITING_APPROVAL.value:
            self.running_since.pop(key, None)
        self.waits.pop(key, None)
        if state == TaskState.AWAITING_APPROVAL.value:
            self.waits[key] = f"awaiting approval: {event.detail}  (orchestrate approve {self.run_id} {key})"
        elif state == TaskState.RETRY_WAIT.value:
            self.waits[key] = event.detail.rpartition("; ")[2] or "waiting to retry"
        if state in _FAILED or state == TaskState.RETRY_WAIT.value:
            detail = event.detail.removeprefix(FAILURE_ALLOWED).strip() if is_allowed_failure(shown) else event.detail
            self.failures.append(_Failure(key, shown, detail, self.logs_of(key, event.attempt)))
            del self.failures[:-MAX_FAILURES]

    def logs_of(self, key: str, attempt: int) -> list[str]:
        """The logs of ``key``'s attempt ``attempt`` (its tool's, its checks'), those that exist."""
        ws_id, _, task_id = key.partition("/")
        return existing_logs(attempt_log_path(self.log_dir, ws_id, task_id, attempt)) if attempt else []

    # -- drawn on rich's refresh thread ------------------------------------------------------------
    def render(self) -> RenderableType:
        with self._lock:
            return self._render(time.monotonic())

    def _render(self, now: float) -> RenderableType:
        parts: list[RenderableType] = [self._header(now), self._workstreams()]
        running = sorted(self.running_since.items(), key=lambda item: item[1])
        if running:
            table = Table.grid(padding=(0, 2))
            for key, since in running[:MAX_RUNNING]:
                table.add_row(Text("▶", style="cyan"), key, Text(self.states[key].lower(), style="dim"),
                              f"{now - since:.1f}s")
            if len(running) > MAX_RUNNING:
                table.add_row("", Text(f"… and {len(running) - MAX_RUNNING} more running", style="dim"), "", "")
            parts.append(Panel(table, title="running", title_align="left", border_style="cyan"))
        waits = [f"{key}: {why}" for key, why in sorted(self.waits.items())]
        if self.waiting:
            waits.insert(0, self.waiting)
        if self.paused:
            waits.insert(0, "run paused: no new task starts (orchestrate resume)")
        if waits:
            shown = waits[:MAX_WAITING] + ([f"… and {len(waits) - MAX_WAITING} more"] if len(waits) > MAX_WAITING else [])
            parts.append(Panel(Text("\n".join(shown), style="yellow"), title="waiting", title_align="left",
                               border_style="yellow"))
        if self.failures:
            lines = Text()
            for failure in self.failures:
                allowed = is_allowed_failure(failure.state)
                lines.append("✗ " if stored_state(failure.state) in _FAILED else "↻ ", style="yellow" if allowed else "red")
                lines.append(f"{failure.task} {failure.state}", style="bold")
                lines.append(f"  {failure.detail}\n")
                for log in failure.logs:
                    lines.append(f"    log: {log}\n", style="dim")
            lines.rstrip()
            parts.append(Panel(lines, title="failures", title_align="left", border_style="red"))
        if self.notices:
            parts.append(Text("\n".join(self.notices), style="dim"))
        return Group(*parts)

    def _header(self, now: float) -> RenderableType:
        counts = Counter(self.states.values())
        grid = Table.grid(padding=(0, 1))
        grid.add_row(Text(f"run {self.run_id}", style="bold"), ProgressBar(total=max(self.total, 1), completed=self.done,
                                                                           width=30),
                     f"{self.done}/{self.total}", Text(f"{now - self.started:.1f}s", style="dim"),
                     _counts_text(counts))
        return grid

    def _workstreams(self) -> RenderableType:
        table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
        table.add_column("WORKSTREAM")
        table.add_column("PROGRESS")
        table.add_column("DONE", justify="right")
        table.add_column("TASKS")
        # Active workstreams first, then unfinished, then finished ones; plan order within each.
        def rank(item: tuple[str, Counter[str]]) -> int:
            counts = item[1]
            if any(counts[state] for state in _RUNNING) or counts[TaskState.AWAITING_APPROVAL.value]:
                return 0
            return 1 if sum(n for s, n in counts.items() if stored_state(s) not in _TERMINAL) else 2
        ordered = sorted(self.ws_counts.items(), key=rank)
        for ws_id, counts in ordered[:MAX_WORKSTREAMS]:
            total = sum(counts.values())
            done = sum(n for state, n in counts.items() if stored_state(state) in _TERMINAL)
            table.add_row(ws_id, ProgressBar(total=max(total, 1), completed=done, width=20), f"{done}/{total}",
                          _counts_text(counts))
        if len(ordered) > MAX_WORKSTREAMS:
            table.add_row(Text(f"… and {len(ordered) - MAX_WORKSTREAMS} more workstreams", style="dim"), "", "", "")
        return table


def _workstream(key: str) -> str:
    return key.partition("/")[0]


def _counts_text(counts: Counter[str]) -> Text:
    text = Text()
    for state, count in sorted(counts.items()):
        if count:
            style = "yellow" if is_allowed_failure(state) else _STYLE.get(state, "dim")
            text.append(f"{state.lower()}={count} ", style=style)
    return text
