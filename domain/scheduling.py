"""Which tasks of a run may start, which are blocked, and how the run ends.

:class:`RunBook` holds the task states of one run and answers the Scheduler's questions; it
never starts anything itself. States change only through :meth:`RunBook.set_state`, which
applies the task state machine, so the book and the ledger agree.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from domain.states import (
    TERMINAL_TASK_STATES,
    WORKSTREAM_TRANSITIONS,
    RunState,
    TaskState,
    WorkstreamState,
    check_transition,
)

_NOT_STARTED = frozenset({TaskState.PENDING, TaskState.QUEUED, TaskState.BLOCKED})
_FAILURE_STATES = frozenset({TaskState.FAILED, TaskState.TIMEOUT, TaskState.CANCELLED})
#: The ends of a task with ``allow_failure`` that count as settled: its dependants run, and
#: the run is not failed by it. A cancel or a block is not a failure of the task's own.
ALLOWED_FAILURE_STATES = frozenset({TaskState.FAILED, TaskState.TIMEOUT})


@dataclass(frozen=True, slots=True)
class Dispatch:
    task_key: str
    adapter: str


class RunBook:
    """Task states and the dependency graph of one run.

    ``deps`` maps every task key to the keys it waits for; ``priorities`` orders ready tasks
    (higher first, then the order the keys were given in, which the caller makes topological).
    ``allowed_failures``: tasks whose failure (:data:`ALLOWED_FAILURE_STATES`) settles them as
    a completion would — their dependants may start, their workstream and run are not failed.
    """

    def __init__(
        self,
        deps: Mapping[str, Iterable[str]],
        priorities: Mapping[str, int],
        workstream_of: Mapping[str, str],
        states: Mapping[str, str] | None = None,
        allowed_failures: Iterable[str] = (),
    ) -> None:
        self.deps: dict[str, frozenset[str]] = {key: frozenset(d) for key, d in deps.items()}
        self.dependants: dict[str, list[str]] = {key: [] for key in self.deps}
        for key, prerequisites in self.deps.items():
            for prerequisite in prerequisites:
                self.dependants[prerequisite].append(key)
        self.order = {key: index for index, key in enumerate(self.deps)}
        self.priorities = dict(priorities)
        self.workstream_of = dict(workstream_of)
        self.states: dict[str, TaskState] = {
            key: TaskState((states or {}).get(key, TaskState.PENDING)) for key in self.deps
        }
        self.allowed_failures = frozenset(allowed_failures)
        self._waiting = {
            key: sum(1 for d in prerequisites if not self.settled(d))
            for key, prerequisites in self.deps.items()
        }
        self._ws_counts: dict[str, Counter[TaskState]] = {}
        for key, state in self.states.items():
            self._ws_counts.setdefault(self.workstream_of[key], Counter())[self._as_for_workstream(key, state)] += 1
        self._terminal = sum(1 for state in self.states.values() if state in TERMINAL_TASK_STATES)
        self.dirty_workstreams: set[str] = set(self._ws_counts)
        self._queue: list[tuple[int, int, str]] = []
        self._queued_adapter: dict[str, str] = {}

    # -- state -----------------------------------------------------------------------------
    def set_state(self, key: str, state: TaskState) -> TaskState:
        """Move ``key`` to ``state`` (checked); returns the previous state."""
        previous = self.states[key]
        check_transition("task", previous, state, key)
        was_settled = self.settled(key)
        self.states[key] = state
        counts = self._ws_counts[self.workstream_of[key]]
        counts[self._as_for_workstream(key, previous)] -= 1
        counts[self._as_for_workstream(key, state)] += 1
        self._terminal += (state in TERMINAL_TASK_STATES) - (previous in TERMINAL_TASK_STATES)
        self.dirty_workstreams.add(self.workstream_of[key])
        # COMPLETED stays in the core (only `execute --plan` takes one back, in the ledger,
        # before the run opens); an allowed failure does not (a retry or resume runs it
        # again), and then its dependants wait for it again.
        change = self.settled(key) - was_settled
        if change:
            for dependant in self.dependants[key]:
                self._waiting[dependant] -= change
        return previous

    def settled(self, key: str) -> bool:
        """``key`` is COMPLETED, or ended in a failure it is allowed: its dependants may run."""
        state = self.states[key]
        return state is TaskState.COMPLETED or (key in self.allowed_failures and state in ALLOWED_FAILURE_STATES)

    def failed_allowed(self, key: str) -> bool:
        """``key`` failed, and is allowed to."""
        return key in self.allowed_failures and self.states[key] in ALLOWED_FAILURE_STATES

    def _as_for_workstream(self, key: str, state: TaskState) -> TaskState:
        # An allowed failure leaves its workstream as a completion would (done, not failed).
        if key in self.allowed_failures and state in ALLOWED_FAILURE_STATES:
            return TaskState.COMPLETED
        return state

    def ready_pending(self) -> list[str]:
        """PENDING tasks whose prerequisites are all settled (see :meth:`settled`), in plan order."""
        return [
            key
            for key, state in self.states.items()
            if state is TaskState.PENDING and self._waiting[key] == 0
        ]

    def ready_dependants(self, key: str) -> list[str]:
        """Dependants of ``key`` that became startable because ``key`` settled."""
        return [
            dependant
            for dependant in self.dependants[key]
            if self.states[dependant] is TaskState.PENDING and self._waiting[dependant] == 0
        ]

    def blocked_by(self, key: str) -> list[str]:
        """Every not-yet-terminal task downstream of ``key``, breadth first: they cannot run."""
        blocked: list[str] = []
        seen = {key}
        frontier = list(self.dependants[key])
        while frontier:
            current = frontier.pop(0)
            if current in seen:
                continue
            seen.add(current)
            if self.states[current] in (TaskState.PENDING, TaskState.RETRY_WAIT, TaskState.QUEUED):
                blocked.append(current)
                frontier.extend(self.dependants[current])
        return blocked

    # -- dispatch queue ----------------------------------------------------------------------
    def enqueue(self, key: str, adapter: str) -> None:
        """A QUEUED task, routed to ``adapter``, waits here for a free slot."""
        self._queued_adapter[key] = adapter
        heapq.heappush(self._queue, (-self.priorities.get(key, 0), self.order[key], key))

    def take_dispatchable(
        self,
        free_slots: int,
        adapter_running: Mapping[str, int],
        adapter_limits: Mapping[str, int],
    ) -> list[Dispatch]:
        """Highest-priority queued tasks that fit the global and per-adapter limits.

        A task whose adapter is full is skipped (not dropped), so a busy adapter never holds
        back work for an idle one.
        """
        chosen: list[Dispatch] = []
        skipped: list[tuple[int, int, str]] = []
        running = dict(adapter_running)
        while self._queue and len(chosen) < free_slots:
            entry = heapq.heappop(self._queue)
            key = entry[2]
            adapter = self._queued_adapter.get(key)
            if adapter is None or self.states[key] is not TaskState.QUEUED:
                continue
            limit = adapter_limits.get(adapter)
            if limit is not None and running.get(adapter, 0) >= limit:
                skipped.append(entry)
                continue
            running[adapter] = running.get(adapter, 0) + 1
            del self._queued_adapter[key]
            chosen.append(Dispatch(key, adapter))
        for entry in skipped:
            heapq.heappush(self._queue, entry)
        return chosen

    def forget_queued(self, key: str) -> None:
        self._queued_adapter.pop(key, None)

    def is_enqueued(self, key: str) -> bool:
        return key in self._queued_adapter

    def queued_for(self, adapter: str) -> list[str]:
        """Tasks waiting for a slot on ``adapter``, in dispatch order."""
        return [key for key, chosen in self._queued_adapter.items() if chosen == adapter]

    def queued_adapters(self) -> list[str]:
        """The adapter of every task waiting for a slot (one entry per task)."""
        return list(self._queued_adapter.values())

    def is_ready(self, key: str) -> bool:
        """All of ``key``'s prerequisites are settled (see :meth:`settled`)."""
        return self._waiting[key] == 0

    # -- summaries ---------------------------------------------------------------------------
    def is_finished(self) -> bool:
        return self._terminal == len(self.states)

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for state in self.states.values():
            result[state.value] = result.get(state.value, 0) + 1
        return result

    def done_count(self) -> int:
        return self._terminal

    def run_outcome(self) -> RunState:
        """How a finished run ends: all completed (allowed failures count as such), none
        completed, or some of each."""
        completed = sum(1 for s in self.states.values() if s is TaskState.COMPLETED)
        if all(self.settled(key) for key in self.states):
            return RunState.COMPLETED
        if all(s is TaskState.CANCELLED or s is TaskState.COMPLETED for s in self.states.values()):
            return RunState.CANCELLED
        return RunState.PARTIAL if completed else RunState.FAILED

    def workstream_target(self, ws_id: str) -> WorkstreamState:
        """The workstream state its tasks' states imply."""
        return derive_workstream_state(state for state, n in self._ws_counts[ws_id].items() if n > 0)

    def take_dirty_workstreams(self) -> list[str]:
        """Workstreams whose tasks changed state since the last call."""
        dirty, self.dirty_workstreams = self.dirty_workstreams, set()
        return sorted(dirty)


def derive_workstream_state(task_states: Iterable[TaskState]) -> WorkstreamState:
    states = list(task_states)
    if all(s is TaskState.COMPLETED for s in states):
        return WorkstreamState.DONE
    if all(s in TERMINAL_TASK_STATES for s in states):
        if any(s in _FAILURE_STATES for s in states):
            return WorkstreamState.FAILED
        return WorkstreamState.BLOCKED
    if any(s not in _NOT_STARTED for s in states):
        return WorkstreamState.EDITING
    if any(s is TaskState.QUEUED for s in states):
        return WorkstreamState.READY
    return WorkstreamState.PENDING


def workstream_path(current: WorkstreamState, target: WorkstreamState) -> list[WorkstreamState]:
    """The shortest legal sequence of states from ``current`` to ``target`` (excluding current).

    Empty when already there or when the machine offers no way (the caller then leaves the
    workstream where it is rather than writing an illegal state).
    """
    if current is target:
        return []
    previous: dict[WorkstreamState, WorkstreamState] = {}
    order = list(WorkstreamState)
    frontier = [current]
    seen = {current}
    while frontier:
        node = frontier.pop(0)
        # Among equally short paths, editing comes last: going back to it from a check phase is
        # for staying at work, not the way through from checks to done.
        for nxt in sorted(WORKSTREAM_TRANSITIONS[node], key=lambda s: (s is WorkstreamState.EDITING, order.index(s))):
            if nxt in seen:
                continue
            seen.add(nxt)
            previous[nxt] = node
            if nxt is target:
                path = [nxt]
                while path[-1] in previous and previous[path[-1]] is not current:
                    path.append(previous[path[-1]])
                return list(reversed(path))
            frontier.append(nxt)
    return []
