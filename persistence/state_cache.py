"""The Store's memory of current states, so checking a transition costs no SELECT.

A run's states are loaded once, on first touch, from committed rows; after that only the Store
changes them. Changes made during a transaction are journaled: :meth:`StateCache.rollback`
undoes them, so the cache never believes in a write the database refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, select

from persistence.models import ErrorRecord, Run, StepAttempt, Task, Workstream

_ABSENT: Final = object()

# (entity kind, key): run -> run_id, workstream -> ws_id, task -> task_key.
StateKey = tuple[str, str]


@dataclass(slots=True)
class RunStates:
    """What the Store knows of one run: current states and which rows already exist."""

    states: dict[StateKey, str]
    task_ws: dict[str, str]
    attempts: set[tuple[str, int]] = field(default_factory=set)
    errors: set[tuple[str, str, str]] = field(default_factory=set)


class StateCache:
    """Runs by id, with an undo journal for the transaction in progress."""

    def __init__(self) -> None:
        self._runs: dict[str, RunStates] = {}
        self._journal: list[tuple[Any, Any, Any]] = []

    def get(self, run_id: str) -> RunStates | None:
        return self._runs.get(run_id)

    def put(self, run_id: str, run: RunStates) -> None:
        """Remember a run as committed in the database (loaded, or created and committed)."""
        self._runs[run_id] = run

    def set_state(self, run: RunStates, key: StateKey, state: str) -> None:
        self._journal.append((run.states, key, run.states.get(key, _ABSENT)))
        run.states[key] = state

    def add(self, members: set[Any], item: Any) -> None:
        if item not in members:
            self._journal.append((members, item, _ABSENT))
            members.add(item)

    def commit(self) -> None:
        self._journal.clear()

    def rollback(self) -> None:
        for container, key, previous in reversed(self._journal):
            if isinstance(container, set):
                container.discard(key)
            elif previous is _ABSENT:
                del container[key]
            else:
                container[key] = previous
        self._journal.clear()


def load_run_states(connection: Connection, run_id: str) -> RunStates | None:
    """The committed states of ``run_id`` read on ``connection``; ``None`` if there is no run."""
    status = connection.execute(select(Run.status).where(Run.run_id == run_id)).scalar()
    if status is None:
        return None
    states: dict[StateKey, str] = {("run", run_id): status}
    for ws_id, ws_status in connection.execute(
        select(Workstream.ws_id, Workstream.status).where(Workstream.run_id == run_id)
    ):
        states[("workstream", ws_id)] = ws_status
    task_ws: dict[str, str] = {}
    for key, state, ws_id in connection.execute(
        select(Task.task_key, Task.state, Task.ws_id).where(Task.run_id == run_id)
    ):
        states[("task", key)] = state
        task_ws[key] = ws_id
    attempts = connection.execute(
        select(StepAttempt.step_name, StepAttempt.attempt).where(StepAttempt.run_id == run_id)
    )
    errors = connection.execute(
        select(ErrorRecord.ws_id, ErrorRecord.step_name, ErrorRecord.signature).where(
            ErrorRecord.run_id == run_id
        )
    )
    return RunStates(
        states=states,
        task_ws=task_ws,
        attempts={(step, attempt) for step, attempt in attempts},
        errors={(ws_id, step, signature) for ws_id, step, signature in errors},
    )
