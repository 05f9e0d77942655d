"""Applying a changed plan to an existing run (``orchestrate execute --run ID --plan PLAN``).

:func:`compare` says which tasks changed (their definition, or what they depend on), which
must therefore run again with everything downstream, and which changes cannot be applied to
the run at all — the run's tasks are fixed when it is created, so a task added or removed, or
a workstream's git isolation changed, needs a new run. Pure: two plans in, a verdict out.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.graph import task_dependencies, topological_order
from domain.plan import Plan

# Workstream fields a run's worktrees and merges were made from.
_WORKTREE_FIELDS = ("repo", "isolation", "target_branch", "merge")


@dataclass(frozen=True, slots=True)
class PlanChange:
    """``changed``: tasks whose definition or dependencies differ; ``rerun``: those and every
    task downstream of them, in dependency order; ``problems``: why the new plan cannot be
    applied (empty when it can)."""

    changed: tuple[str, ...]
    rerun: tuple[str, ...]
    problems: tuple[str, ...]


def compare(old: Plan, new: Plan) -> PlanChange:
    old_tasks = {task.key: task for task in old.tasks}
    new_tasks = {task.key: task for task in new.tasks}
    old_deps, new_deps = task_dependencies(old), task_dependencies(new)
    problems = []
    for key in old_tasks:
        if key not in new_tasks:
            needed_by = sorted(k for k, deps in old_deps.items() if key in deps and k in new_tasks)
            why = f"; {', '.join(needed_by)} depended on it" if needed_by else ""
            problems.append(f"task {key} was removed{why}")
    problems += [f"task {key} was added" for key in new_tasks if key not in old_tasks]
    old_ws = {ws.id: ws for ws in old.workstreams}
    for ws in new.workstreams:
        before = old_ws.get(ws.id)
        if before is None:
            continue
        fields = [name for name in _WORKTREE_FIELDS if getattr(before, name) != getattr(ws, name)]
        if fields:
            problems.append(f"workstream {ws.id} changed its {', '.join(fields)} (its worktree was made from them)")
    if problems:
        return PlanChange((), (), tuple(problems))
    order = topological_order(new_deps)
    changed = tuple(key for key in order
                    if old_tasks[key].to_json() != new_tasks[key].to_json() or old_deps[key] != new_deps[key])
    dependants: dict[str, list[str]] = {key: [] for key in new_deps}
    for key, deps in new_deps.items():
        for dep in deps:
            dependants[dep].append(key)
    rerun, frontier = set(changed), list(changed)
    while frontier:
        for dependant in dependants[frontier.pop()]:
            if dependant not in rerun:
                rerun.add(dependant)
                frontier.append(dependant)
    return PlanChange(changed, tuple(key for key in order if key in rerun), ())
