"""Which tasks a ``--force`` names: every one, or those listed (each must be in the plan).

``run --force`` and ``submit --force`` (over the control socket) read the same answer here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

# How many of a plan's task keys a refusal lists as a hint.
_HINT = 10


class UnknownTasksForced(ValueError):
    """``--force`` named tasks the plan does not have; the message lists some it does."""


def forced_tasks(force: Sequence[str] | None, known: Collection[str], source: str) -> tuple[bool, tuple[str, ...]]:
    """``(every task, these tasks)`` for a ``--force`` given as ``force``: ``None`` (not given)
    forces nothing, an empty list every task, a list those tasks. ``known``: the plan's task
    keys; ``source``: the plan's file, named in the refusal. Raises :class:`UnknownTasksForced`."""
    if force is None:
        return False, ()
    if not force:
        return True, ()
    unknown = [name for name in force if name not in known]
    if unknown:
        names = sorted(known)
        shown = ", ".join(names[:_HINT]) + (", ..." if len(names) > _HINT else "")
        raise UnknownTasksForced(f"no task {', '.join(map(repr, unknown))} in {source} "
                                 f"(name tasks as workstream/task: {shown})")
    return False, tuple(dict.fromkeys(force))
