"""Graph checks of a schema-valid plan: duplicate ids, unknown or self dependencies, cycles.

Every problem is located at the file and JSON path the user has to edit. Cycles are looked for
only when ids are unambiguous, and on the expanded task graph (a workstream dependency makes
each of its tasks depend on every task of the other workstream), so a task depending on a
workstream that waits for the task's own workstream is caught too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from planning.errors import PlanIssue
from domain.graph import cyclic_components, find_cycles, task_dependencies
from domain.plan import TASK_KEY_SEPARATOR, Plan, TaskSpec, task_key

_LISTED = 10


@dataclass(frozen=True, slots=True)
class WorkstreamSource:
    """A workstream object as read (schema-valid), with where it was read from.

    ``json_path`` is ``$`` for a single-workstream file and ``$.workstreams[i]`` in a bundle;
    ``defaults`` are the bundle's task defaults.
    """

    file: str
    json_path: str
    data: Mapping[str, Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)


def qualify(workstream_id: str, ref: str) -> str:
    """A ``depends_on`` entry as a task key: a bare task id means one of the same workstream."""
    return ref if TASK_KEY_SEPARATOR in ref else task_key(workstream_id, ref)


def graph_issues(plan: Plan, sources: Sequence[WorkstreamSource]) -> list[PlanIssue]:
    """Problems of ``plan``, built from ``sources`` (same order, one workstream each)."""
    issues = _duplicate_ids(sources)
    ambiguous = bool(issues)
    issues += _unknown_dependencies(sources)
    if not ambiguous:
        issues += _cycles(plan, sources)
    return issues


def _duplicate_ids(sources: Sequence[WorkstreamSource]) -> list[PlanIssue]:
    issues = []
    first: dict[str, WorkstreamSource] = {}
    for source in sources:
        ws_id = source.data["id"]
        if ws_id in first:
            other = first[ws_id]
            issues.append(
                PlanIssue(
                    source.file,
                    f"{source.json_path}.id",
                    f"duplicate workstream id {ws_id!r}, "
                    f"also defined in {other.file} at {other.json_path}",
                )
            )
            continue
        first[ws_id] = source
        seen: dict[str, int] = {}
        for index, task in enumerate(source.data["tasks"]):
            if task["id"] in seen:
                issues.append(
                    PlanIssue(
                        source.file,
                        f"{source.json_path}.tasks[{index}].id",
                        f"duplicate task id {task['id']!r} in workstream {ws_id!r}, "
                        f"first at {source.json_path}.tasks[{seen[task['id']]}]",
                    )
                )
            seen.setdefault(task["id"], index)
    return issues


def _unknown_dependencies(sources: Sequence[WorkstreamSource]) -> list[PlanIssue]:
    task_ids: dict[str, list[str]] = {}
    for source in sources:
        task_ids.setdefault(source.data["id"], [task["id"] for task in source.data["tasks"]])
    issues = []
    for source in sources:
        ws_id = source.data["id"]
        for index, dep in enumerate(source.data.get("depends_on", ())):
            where = f"{source.json_path}.depends_on[{index}]"
            if dep == ws_id:
                issues.append(
                    PlanIssue(source.file, where, f"workstream {ws_id!r} depends on itself")
                )
            elif dep not in task_ids:
                issues.append(
                    PlanIssue(
                        source.file,
                        where,
                        f"unknown workstream {dep!r} (known: {_listing(task_ids)})",
                    )
                )
        for t_index, task in enumerate(source.data["tasks"]):
            own = task_key(ws_id, task["id"])
            for d_index, ref in enumerate(task.get("depends_on", ())):
                where = f"{source.json_path}.tasks[{t_index}].depends_on[{d_index}]"
                dep_ws, _, dep_task = qualify(ws_id, ref).partition(TASK_KEY_SEPARATOR)
                if qualify(ws_id, ref) == own:
                    issues.append(PlanIssue(source.file, where, f"task {own!r} depends on itself"))
                elif dep_ws not in task_ids:
                    issues.append(
                        PlanIssue(
                            source.file,
                            where,
                            f"unknown workstream {dep_ws!r} in task dependency {ref!r} "
                            f"(known: {_listing(task_ids)})",
                        )
                    )
                elif dep_task not in task_ids[dep_ws]:
                    issues.append(
                        PlanIssue(
                            source.file,
                            where,
                            f"unknown task {ref!r}: workstream {dep_ws!r} has no task {dep_task!r} "
                            f"(its tasks: {_listing(task_ids[dep_ws])})",
                        )
                    )
    return issues


def _cycles(plan: Plan, sources: Sequence[WorkstreamSource]) -> list[PlanIssue]:
    """Workstream cycles, then task cycles (explicit links plus those workstreams imply)."""
    source_of = {source.data["id"]: source for source in sources}
    ws_graph = {
        ws.id: [dep for dep in ws.depends_on if dep != ws.id and dep in source_of]
        for ws in plan.workstreams
    }
    issues = []
    for cycle in find_cycles(ws_graph):
        source = source_of[cycle[0]]
        where = f"{source.json_path}.depends_on[{list(source.data['depends_on']).index(cycle[1])}]"
        members = " -> ".join(cycle)
        issues.append(
            PlanIssue(
                source.file, where, f"cycle: {members} (workstreams; each depends on the next)"
            )
        )
    return issues + _task_cycles(plan, source_of, ws_graph)


def _task_cycles(
    plan: Plan, source_of: Mapping[str, WorkstreamSource], ws_graph: Mapping[str, list[str]]
) -> list[PlanIssue]:
    issues = []
    tasks = {task.key: task for task in plan.tasks}
    explicit = {key: set(task.depends_on) for key, task in tasks.items()}
    # Inside a workstream cycle every task is on a cycle already reported above; only the links
    # a workstream dependency adds across components (and explicit ones) can form new cycles.
    component_of = {
        ws_id: index
        for index, members in enumerate(cyclic_components(ws_graph))
        for ws_id in members
    }

    def kept(key: str, dep: str) -> bool:
        if dep == key or dep not in tasks:
            return False
        component = component_of.get(tasks[key].workstream_id)
        return (
            dep in explicit[key]
            or component is None
            or component != component_of.get(tasks[dep].workstream_id)
        )

    task_graph = {
        key: [dep for dep in deps if kept(key, dep)]
        for key, deps in task_dependencies(plan).items()
    }
    for cycle in find_cycles(task_graph):
        links = list(pairwise(cycle))
        # Links implied by workstreams alone cannot close a cycle here, so an explicit one exists.
        first, target = next((u, v) for u, v in links if v in explicit[u])
        source = source_of[tasks[first].workstream_id]
        where = _dependency_path(source, tasks[first], target)
        via = [
            f"{u} -> {v} because workstream {tasks[u].workstream_id!r} "
            f"depends on {tasks[v].workstream_id!r}"
            for u, v in links
            if v not in explicit[u]
        ]
        detail = "; ".join(["each depends on the next", *via])
        issues.append(PlanIssue(source.file, where, f"cycle: {' -> '.join(cycle)} ({detail})"))
    return issues


def _dependency_path(source: WorkstreamSource, task: TaskSpec, target: str) -> str:
    """The JSON path of the ``depends_on`` entry of ``task`` that names ``target``."""
    t_index = next(i for i, data in enumerate(source.data["tasks"]) if data["id"] == task.id)
    refs = source.data["tasks"][t_index]["depends_on"]
    d_index = next(i for i, ref in enumerate(refs) if qualify(task.workstream_id, ref) == target)
    return f"{source.json_path}.tasks[{t_index}].depends_on[{d_index}]"


def _listing(names: Iterable[str]) -> str:
    ordered = sorted(names)
    if not ordered:
        return "none"
    shown = ", ".join(ordered[:_LISTED])
    return shown + (f", ... ({len(ordered)} in all)" if len(ordered) > _LISTED else "")
