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
    keys; ``source``: the plan's file, named in the refusal. A matrix task's name (``ws/tests``)
    forces every expansion of it (``ws/tests[shard=1]`` …), as a dependency on it waits for all.
    Raises :class:`UnknownTasksForced`."""
    if force is None:
        return False, ()
    if not force:
        return True, ()
    named = {name: [name] if name in known else sorted(k for k in known if k.startswith(name + "["))
             for name in force}
    unknown = [name for name, keys in named.items() if not keys]
    if unknown:
        names = sorted(known)
        shown = ", ".join(names[:_HINT]) + (", ..." if len(names) > _HINT else "")
        raise UnknownTasksForced(f"no task {', '.join(map(repr, unknown))} in {source} "
                                 f"(name tasks as workstream/task: {shown})")
    return False, tuple(dict.fromkeys(key for keys in named.values() for key in keys))


def forcing_needs_new_run(force_all: bool, force: Collection[str], completed: Collection[str]) -> bool:
    """Whether ``--force`` (every task, or ``force``) names a task the unfinished run that
    ``run``/``submit`` would continue has ``completed``: continuing keeps what it completed, so
    the forced task would silently not run. A new run runs it (and reuses the rest that holds)."""
    return bool(completed) and (force_all or not set(force).isdisjoint(completed))
