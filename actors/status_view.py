"""A read model of the runs a runtime is executing, fed by the Scheduler's progress events.

``status`` requests are answered from here, not by asking the Scheduler, so a busy
Scheduler (hundreds of tasks in flight) never delays them and status load never delays
scheduling. The view trails the Scheduler by the time an event takes through the event
thread, which is what a status display needs.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from control.protocol import EncodedResult, encode_result
from domain.shown import CACHED, progress_shown_state, shown_state, status_fields
from domain.states import TERMINAL_TASK_STATES, TaskState
from messages import RunProgress

_RUNNING = frozenset({TaskState.IN_PROGRESS.value, TaskState.VALIDATING.value, TaskState.AWAITING_APPROVAL.value})
_TERMINAL = frozenset(state.value for state in TERMINAL_TASK_STATES)
_TASK_STATES = frozenset(state.value for state in TaskState)


@dataclass(slots=True)
class _RunView:
    tasks: dict[str, str]
    allowed: frozenset[str] = frozenset()  # tasks the plan lets fail (allow_failure)
    cached: set[str] = field(default_factory=set)  # tasks completed with an earlier run's result
    awaiting: dict[str, str] = field(default_factory=dict)
    since: dict[str, str] = field(default_factory=dict)  # running task -> when its attempt started
    paused: bool = False
    finished: str = ""
    reason: str = ""


class StatusView:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, _RunView] = {}
        self.paused_all = False
        # Bumped by every change; an encoded snapshot is reused until it moves, so a hundred
        # clients polling a 500-task run cost one encoding per change, not one per request.
        self._version = 0
        self._encoded: dict[str | None, tuple[int, EncodedResult]] = {}

    def start(self, run_id: str, task_states: dict[str, str], allowed: frozenset[str] = frozenset()) -> None:
        """A run was (re)submitted with these recorded states; ``allowed``: the tasks its plan
        lets fail (their failures are shown as allowed)."""
        with self._lock:
            self._version += 1
            self._runs[run_id] = _RunView(tasks=dict(task_states), allowed=allowed)

    def apply(self, event: RunProgress) -> None:
        with self._lock:
            self._version += 1
            view = self._runs.get(event.run_id)
            if view is None:
                return
            if event.finished_run_state:
                view.finished, view.reason = event.finished_run_state, event.detail
                return
            if event.task_key not in view.tasks or event.state not in _TASK_STATES:
                return  # a notice about a task (FIXING, RETRIED) is not a state
            view.tasks[event.task_key] = event.state
            if progress_shown_state(event.state, event.detail) == CACHED:
                view.cached.add(event.task_key)
            else:
                view.cached.discard(event.task_key)
            if event.state == TaskState.IN_PROGRESS.value:
                view.since[event.task_key] = event.at
            elif event.state not in _RUNNING:
                view.since.pop(event.task_key, None)
            if event.state == TaskState.AWAITING_APPROVAL.value:
                view.awaiting[event.task_key] = event.detail
            else:
                view.awaiting.pop(event.task_key, None)

    def set_paused(self, run_id: str | None, paused: bool) -> None:
        with self._lock:
            self._version += 1
            if run_id is None:
                self.paused_all = paused
                for view in self._runs.values():
                    view.paused = paused
            elif run_id in self._runs:
                self._runs[run_id].paused = paused

    def active(self, run_id: str) -> bool:
        with self._lock:
            view = self._runs.get(run_id)
            return view is not None and not view.finished

    def state_totals(self) -> Counter[str]:
        """Tasks of the active runs counted by state (for metrics: queue depth, running)."""
        with self._lock:
            totals: Counter[str] = Counter()
            for view in self._runs.values():
                if not view.finished:
                    totals.update(view.tasks.values())
            return totals

    def snapshot(self, run_id: str | None = None) -> dict[str, Any]:
        """Active runs (or the one asked for, finished or not) in the shape of ``status``."""
        with self._lock:
            if run_id is not None:
                chosen = [(run_id, self._runs[run_id])] if run_id in self._runs else []
            else:
                chosen = [(rid, view) for rid, view in self._runs.items() if not view.finished]
            return {"paused_all": self.paused_all, "runs": [self._describe(rid, view) for rid, view in chosen]}

    def encoded_snapshot(self, run_id: str | None = None) -> EncodedResult | None:
        """:meth:`snapshot`, encoded for a control reply; None when ``run_id`` is not here."""
        with self._lock:
            version = self._version
            cached = self._encoded.get(run_id)
            if cached is not None and cached[0] == version:
                return cached[1]
            if run_id is not None and run_id not in self._runs:
                return None
        encoded = encode_result(self.snapshot(run_id))
        with self._lock:
            # A change between the two locks makes this copy stale: kept under the old version, so
            # the next request encodes again.
            self._encoded[run_id] = (version, encoded)
        return encoded

    def _describe(self, run_id: str, view: _RunView) -> dict[str, Any]:
        counts = Counter(view.tasks.values())
        shown = {key: shown_state(state, key in view.allowed, key in view.cached) for key, state in view.tasks.items()}
        return {
            "run_id": run_id,
            "active": not view.finished,
            "status": view.finished or "running",
            "status_reason": view.reason,
            "paused": (view.paused or self.paused_all) and not view.finished,
            "counts": dict(sorted(counts.items())),
            **status_fields(view.tasks, shown),
            "done": sum(n for state, n in counts.items() if state in _TERMINAL),
            "total": len(view.tasks),
            "running": sorted(key for key, state in view.tasks.items() if state in _RUNNING),
            "running_since": dict(view.since),
            "awaiting_approval": [{"task": k, "prompt": p} for k, p in sorted(view.awaiting.items())],
            "tasks": dict(view.tasks),
        }
