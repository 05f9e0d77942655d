"""How a foreground run shows its progress: a live panel, plain lines, JSON lines, or nothing.

- ``live``: stdout is a terminal — the rich panel of :mod:`cli.live`, redrawn on a timer;
- ``plain``: stdout is a file or a pipe — one line per state change (stable, for scripts
  that read it and for logs), failures followed by their log path;
- ``json``: ``--json`` — one JSON object per line: ``{"event", "run", "task", "state",
  "attempt", "time", "done", "total", "detail", "logs"}``, then a ``run_finished`` object;
- ``quiet``: ``--quiet`` — only the summary.

A :class:`Display` is a progress listener (called on the runtime's event thread) plus what is
printed before and after the run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from cli.output import existing_logs, paint, progress_line, use_colour
from domain.run_core import attempt_log_path
from messages import RunProgress

_SHOWS_LOG = frozenset({"FAILED", "TIMEOUT", "RETRY_WAIT"})


def choose_mode(quiet: bool, as_json: bool, stream=sys.stdout) -> str:
    if as_json:
        return "json"
    if quiet:
        return "quiet"
    return "live" if stream.isatty() and os.environ.get("TERM") != "dumb" else "plain"


class Display:
    """The foreground's progress for run ``run_id`` in ``mode``; ``states``: its tasks' states
    when it starts; ``log_dir``: where its attempts' logs go."""

    def __init__(self, mode: str, run_id: str, log_dir: Path, states: dict[str, str]) -> None:
        self.mode = mode
        self.run_id = run_id
        self.log_dir = str(log_dir)
        self.colour = use_colour()
        self.printing = mode in ("plain", "json")
        self._live = None
        self.board = None
        if mode == "live":
            from rich.console import Console
            from rich.live import Live

            from cli.live import REFRESH_PER_SECOND, Board

            self.board = Board(run_id, self.log_dir, dict(states))
            self._live = Live(get_renderable=self.board.render, console=Console(), refresh_per_second=REFRESH_PER_SECOND,
                              redirect_stdout=False, redirect_stderr=False)

    @property
    def listens(self) -> bool:
        return self.mode != "quiet"

    def header(self, text: str, facts: dict[str, Any]) -> None:
        if self.mode == "json":
            self._emit({"event": "run_started", "run": self.run_id, **facts})
        else:
            print(text, flush=True)

    def start(self) -> None:
        if self._live is not None:
            self._live.start()

    def stop(self) -> None:
        """Draw the panel one last time and leave it on screen (idempotent)."""
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()

    def __call__(self, event: RunProgress) -> None:
        if event.run_id and event.run_id != self.run_id:
            return
        if self.board is not None:
            self.board.apply(event)
        elif self.printing:
            self._print(event)

    def _print(self, event: RunProgress) -> None:
        logs = self._logs(event) if event.state in _SHOWS_LOG else []
        if self.mode == "json":
            self._emit(event_json(event, logs))
            return
        line = f"  ! {event.detail}" if event.state == "WARNING" else progress_line(event, self.colour, self.run_id)
        if line:
            line += "".join("\n        " + paint(f"log: {log}", "dim", self.colour) for log in logs)
        if line:
            self._write(line)

    def _emit(self, document: dict[str, Any]) -> None:
        self._write(json.dumps(document, sort_keys=True))

    def _write(self, line: str) -> None:
        if not self.printing:
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:
            # The reader went away (`| head`): the run goes on, silently.
            self.printing = False
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def _logs(self, event: RunProgress) -> list[str]:
        if not event.attempt:
            return []
        ws_id, _, task_id = event.task_key.partition("/")
        return existing_logs(attempt_log_path(self.log_dir, ws_id, task_id, event.attempt))

    def finished(self, summary: dict[str, Any]) -> None:
        """The run's outcome, in JSON mode (other modes print the text summary)."""
        self._emit({"event": "run_finished", "run": self.run_id, **summary})


def event_json(event: RunProgress, logs: list[str] | None = None) -> dict[str, Any]:
    """One line of ``--json``: what kind of event, about what, when; ``logs``: a failed
    attempt's logs (its tool's, then its checks')."""
    kind = "run" if event.finished_run_state else "task" if event.task_key else "notice"
    return {"event": kind, "run": event.run_id, "task": event.task_key, "state": event.state,
            "attempt": event.attempt, "time": event.at, "done": event.done, "total": event.total,
            "detail": event.detail, "logs": logs or []}
