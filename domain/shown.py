"""How a task's outcome is shown: its stored state, told apart where the bare state misleads.

The ledger keeps each task's state as the state machine has it. Two outcomes read wrong bare:

- a failure its plan allows (``allow_failure``) is ``FAILED`` (or ``TIMEOUT``) but did not fail
  the run: shown ``FAILED (allowed)``;
- a result reused from an earlier run (incremental runs) is ``COMPLETED`` but nothing ran:
  shown ``CACHED``.

Every display — the end-of-run summary, ``runs``, ``runs show``, ``status``, the live view, the
report and the dashboard — asks here, so they all say the same. Nothing stored changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from domain.cache import CACHE_ADAPTER
from domain.states import FAILURE_ALLOWED, TaskState

CACHED = "CACHED"
FAILING = frozenset({TaskState.FAILED.value, TaskState.TIMEOUT.value})
_COMPLETED = TaskState.COMPLETED.value
# What a progress event's detail begins with when the run core completed a task from the cache.
_CACHED_DETAIL = "cached"


def shown_state(state: str, allowed: bool = False, cached: bool = False) -> str:
    """``state`` as shown: ``FAILED (allowed)`` / ``TIMEOUT (allowed)`` for a failure the plan
    allows, ``CACHED`` for a completion reused from an earlier run, else ``state``."""
    if allowed and state in FAILING:
        return f"{state} {FAILURE_ALLOWED}"
    if cached and state == _COMPLETED:
        return CACHED
    return state


def stored_state(shown: str) -> str:
    """The state a shown state stands for (the inverse of :func:`shown_state`)."""
    if shown == CACHED:
        return _COMPLETED
    return shown.removesuffix(f" {FAILURE_ALLOWED}")


def is_allowed_failure(shown: str) -> bool:
    return shown.endswith(f" {FAILURE_ALLOWED}")


def allows_failure(spec: Any) -> bool:
    """Whether a task's recorded spec (its plan snapshot, decoded) has ``allow_failure``."""
    return isinstance(spec, Mapping) and spec.get("allow_failure") is True


def task_shown_state(task: Mapping[str, Any]) -> str:
    """A task row's state as shown (a row as the ledger's reader gives it: ``state``,
    ``adapter``, and ``spec`` decoded from the run's plan snapshot)."""
    return shown_state(str(task["state"]), allows_failure(task.get("spec")), task.get("adapter") == CACHE_ADAPTER)


def progress_shown_state(state: str, detail: str, allowed: bool = False) -> str:
    """A progress event's state as shown: the run core starts the detail of an allowed failure
    with ``(allowed)`` and of a reused result with ``cached``; ``allowed`` says the plan lets
    the task fail (when the caller knows it from the plan)."""
    return shown_state(state, allowed or detail.startswith(FAILURE_ALLOWED), detail.startswith(_CACHED_DETAIL))


def css_name(shown: str) -> str:
    """A shown state as a CSS class suffix (no spaces): ``FAILED-allowed``, ``CACHED``."""
    return shown.replace(f" {FAILURE_ALLOWED}", "-allowed")


def outcome_text(counts: Mapping[str, int]) -> str:
    """Counts by shown state as a sentence: ``4 completed (2 cached), 1 failed (allowed)``.
    Cached results are completions (said within them); states in name order, zeros left out."""
    merged = Counter({state: n for state, n in counts.items() if n and state != CACHED})
    cached = counts.get(CACHED, 0)
    if cached:
        merged[_COMPLETED] += cached
    parts = []
    for state, n in sorted(merged.items()):
        parts.append(f"{n} {state.lower()}" + (f" ({cached} cached)" if state == _COMPLETED and cached else ""))
    return ", ".join(parts)


def counts_text(counts: Mapping[str, int]) -> str:
    """Counts by shown state as ``state=n`` pairs in name order: ``cached=2 completed=1
    failed (allowed)=1`` (the compact form of ``status`` and ``runs``)."""
    return " ".join(f"{state.lower()}={n}" for state, n in sorted(counts.items()) if n)


def status_fields(states: Mapping[str, str], shown: Mapping[str, str]) -> dict[str, Any]:
    """The part of a ``status`` answer that says tasks as shown, from their ``states`` and
    shown states: ``shown_counts`` (tasks by shown state) and ``shown_states`` (only the tasks
    whose shown state is not their state, so a big run's answer does not double)."""
    return {"shown_counts": dict(sorted(Counter(shown.values()).items())),
            "shown_states": {key: label for key, label in shown.items() if label != states[key]}}
