"""Health, decided from what the ledger recorded: is the last runtime alive, and does a run's
record hold together. Pure: rows in, findings out; the caller reads the ledger and the clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from domain.routing import RouterConfig
from domain.states import TERMINAL_RUN_STATES, TERMINAL_TASK_STATES, RunState, TaskState

_TERMINAL_TASKS = frozenset(state.value for state in TERMINAL_TASK_STATES)
_TERMINAL_RUNS = frozenset(state.value for state in TERMINAL_RUN_STATES)
_OPEN_ATTEMPTS = frozenset({TaskState.IN_PROGRESS.value, TaskState.VALIDATING.value,
                            TaskState.AWAITING_APPROVAL.value})
# A runtime is presumed gone when its heartbeat is this many intervals old.
MISSED_BEATS = 3


class Liveness(StrEnum):
    NONE = "none"  # no runtime ever recorded a heartbeat here
    RUNNING = "running"  # beating: a runtime holds the state directory
    STOPPED = "stopped"  # it said it stopped
    LOST = "lost"  # its heartbeat stopped without a word (killed, machine down)


@dataclass(frozen=True, slots=True)
class Finding:
    """Something wrong in a run's record; ``error``: the record contradicts itself (a bug or a
    damaged ledger), else a warning a person can act on (``text`` says how)."""

    run_id: str
    text: str
    error: bool


def seconds_between(earlier: str, later: str) -> float:
    """Seconds from one ISO-8601 timestamp (``...Z`` or with an offset) to another."""
    return (_parse(later) - _parse(earlier)).total_seconds()


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def liveness(beat: Mapping[str, Any] | None, now: str, interval_s: float,
             lock_held: bool | None = None) -> Liveness:
    """What the last runtime's heartbeat row (``runtime_heartbeats``) says at ``now``.
    ``lock_held``: whether a process holds the state directory's lock (None: unknown, e.g. the
    runtime is on another machine) — when known it decides, since a killed runtime's last
    heartbeat can be seconds old."""
    if beat is None:
        return Liveness.NONE
    if beat.get("stopped_at"):
        return Liveness.STOPPED
    if lock_held is not None:
        return Liveness.RUNNING if lock_held else Liveness.LOST
    if seconds_between(beat["beat_at"], now) <= MISSED_BEATS * interval_s:
        return Liveness.RUNNING
    return Liveness.LOST


def check_run_record(run: Mapping[str, Any], tasks: Iterable[Mapping[str, Any]],
                     attempts: Iterable[Mapping[str, Any]], runtime_alive: bool) -> list[Finding]:
    """The contradictions (errors) and loose ends (warnings) of one run's rows.

    Errors: a finished run with unfinished tasks, a completed run with a task not completed, a
    task completed more than once or without a completed attempt, more attempts recorded than
    the task counts, an attempt of an unknown task. Warnings, only when no runtime is alive: a
    run left running or attempts left open by a runtime that died (resume with ``execute``)."""
    run_id = run["run_id"]
    status = run["status"]
    findings: list[Finding] = []

    def error(text: str) -> None:
        findings.append(Finding(run_id, text, True))

    states = {task["task_key"]: task for task in tasks}
    completed_attempts: Counter[str] = Counter()
    recorded: Counter[str] = Counter()
    open_attempts = []
    for attempt in attempts:
        key = attempt["step_name"]
        if key not in states:
            error(f"attempt {attempt['attempt']} of unknown task {key!r}")
            continue
        recorded[key] += 1
        if attempt["status"] == TaskState.COMPLETED.value:
            completed_attempts[key] += 1
        elif attempt["status"] in _OPEN_ATTEMPTS:
            open_attempts.append(f"{key} (attempt {attempt['attempt']})")
    unfinished = sorted(key for key, task in states.items() if task["state"] not in _TERMINAL_TASKS)
    if status in _TERMINAL_RUNS and unfinished:
        error(f"run is {status} but {len(unfinished)} task(s) are not finished: {', '.join(unfinished[:5])}")
    if status == RunState.COMPLETED.value:
        incomplete = sorted(key for key, task in states.items() if task["state"] != TaskState.COMPLETED.value)
        if incomplete:
            error(f"run is completed but {', '.join(incomplete[:5])} did not complete")
    for key, task in sorted(states.items()):
        if completed_attempts[key] > 1:
            error(f"task {key} has {completed_attempts[key]} completed attempts (at most one may complete)")
        if task["state"] == TaskState.COMPLETED.value and not completed_attempts[key]:
            error(f"task {key} is COMPLETED without a completed attempt")
        if recorded[key] > (task.get("attempts") or 0):
            error(f"task {key} counts {task.get('attempts') or 0} attempt(s) but {recorded[key]} are recorded")
    if not runtime_alive:
        resume = f"resume it with `orchestrate execute --run {run_id}`"
        if status not in _TERMINAL_RUNS:
            findings.append(Finding(run_id, f"run is {status} but no runtime is running it; {resume}", False))
        if open_attempts:
            findings.append(Finding(run_id, f"attempts left open by a runtime that stopped: "
                                            f"{', '.join(open_attempts[:5])}; {resume}", False))
    return findings


def adapters_needed(tools: Iterable[str], config: RouterConfig) -> frozenset[str]:
    """The adapters that could run work of ``tools``: those serving them, those routing rules
    name, and their fallbacks (a merge step needs none: the Workspace does it)."""
    wanted = set(tools)
    needed = {info.name for info in config.adapters if wanted & set(info.serves)}
    needed |= {name for rule in config.rules if rule.tool is None or rule.tool in wanted for name in rule.adapters}
    needed |= {info.fallback for info in config.adapters if info.name in needed and info.fallback}
    return frozenset(needed)


def all_circuits_open(needed: Iterable[str], circuits: Mapping[str, str]) -> bool:
    """Whether every adapter in ``needed`` has an open circuit (nothing of it can run)."""
    names = list(needed)
    return bool(names) and all(circuits.get(name) == "open" for name in names)
