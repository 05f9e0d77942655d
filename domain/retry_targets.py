"""What ``orchestrate retry RUN NAME`` retries: NAME is a task key (``ws/task``), or a
workstream id meaning every unsuccessful task of that workstream (its merge step included:
``retry RUN WS`` after fixing what made a merge fail). Pure: the run's task states in, the keys
out, or a refusal that says why."""

from __future__ import annotations

from collections.abc import Mapping

from domain.plan import TASK_KEY_SEPARATOR
from domain.states import UNSUCCESSFUL_TASK_STATES, TaskState


class NothingToRetry(ValueError):
    """NAME names nothing that can be retried; the message says why (``kind`` is
    ``not_found`` or ``refused``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def retry_targets(run_id: str, states: Mapping[str, TaskState | str], name: str) -> tuple[str, ...]:
    """The task keys to retry for ``name`` (sorted); raises :class:`NothingToRetry`."""
    unsuccessful = {TaskState(s) for s in UNSUCCESSFUL_TASK_STATES}
    if name in states:
        state = TaskState(states[name])
        if state not in unsuccessful:
            raise NothingToRetry("refused", f"task {name} is {state.value}; only failed, timed-out, blocked or "
                                            "cancelled tasks can be retried")
        return (name,)
    prefix = f"{name}{TASK_KEY_SEPARATOR}"
    of_workstream = {key: TaskState(state) for key, state in states.items() if key.startswith(prefix)}
    if TASK_KEY_SEPARATOR in name:
        raise NothingToRetry("not_found", f"run {run_id} has no task {name!r}")
    if not of_workstream:
        raise NothingToRetry("not_found", f"run {run_id} has no task or workstream {name!r}")
    keys = tuple(sorted(key for key, state in of_workstream.items() if state in unsuccessful))
    if not keys:
        raise NothingToRetry("refused", f"workstream {name} has no failed, timed-out, blocked or cancelled task "
                                        "to retry")
    return keys
