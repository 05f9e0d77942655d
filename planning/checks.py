"""Graph checks of a plan as read: duplicate ids, unknown or self dependencies, cycles.

Every problem is located at the file and JSON path the user has to edit. The checks read the
workstream objects as written, not a built :class:`Plan`, so they also run on a plan that has
schema errors: whatever is structurally usable (a workstream or task with a string ``id``, a
``depends_on`` entry that is a string) is checked, the rest is left to the schema's report.

Cycles are looked for only when ids are unambiguous, and on the task graph with workstream
dependencies taken into account (a workstream dependency makes each of its tasks wait for every
task of the other workstream), so a task depending on a workstream that waits for the task's
own workstream is caught too. A workstream dependency is one node standing for "every task of
that workstream", never an edge per pair of tasks, so every check stays linear in the size of
the plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from planning.errors import PlanIssue
from domain.graph import cyclic_components, find_cycles
from domain.plan import TASK_KEY_SEPARATOR, task_key

_LISTED = 10
# Prefix of the node that stands for "all tasks of a workstream" in the task graph; a NUL never
# occurs in a task key, so it cannot collide with one.
_WHOLE = "\0"


@dataclass(frozen=True, slots=True)
class WorkstreamSource:
    """A workstream object as read, with where it was read from.

    ``json_path`` is ``$`` for a single-workstream file and ``$.workstreams[i]`` in a bundle;
    ``defaults`` are the bundle's task defaults. ``data`` has a string ``id`` but may otherwise
    break the schema. After matrix expansion (:mod:`planning.matrix`) ``task_indices`` holds,
    for each task of ``data``, the index of the task it was written as, and ``groups`` maps a
    matrix task's id to its expansions' ids. ``python`` is the bundle's ``python``, if any.
    """

    file: str
    json_path: str
    data: Mapping[str, Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    task_indices: tuple[int, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    python: Any = None

    @property
    def id(self) -> str:
        return self.data["id"]

    def tasks(self) -> Iterator[tuple[int, Mapping[str, Any]]]:
        """``(index, task)`` of every task object with a string ``id``."""
        tasks = self.data.get("tasks")
        if isinstance(tasks, list):
            for index, task in enumerate(tasks):
                if isinstance(task, dict) and isinstance(task.get("id"), str):
                    yield (self.task_indices[index] if self.task_indices else index), task

    def depends_on(self) -> Iterator[tuple[int, str]]:
        return _strings(self.data.get("depends_on"))


def task_depends_on(task: Mapping[str, Any]) -> Iterator[tuple[int, str]]:
    """``(index, entry)`` of every string entry of a task's ``depends_on``."""
    return _strings(task.get("depends_on"))


def _strings(value: Any) -> Iterator[tuple[int, str]]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield index, item


def _first_mentions(entries: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    seen: set[str] = set()
    for index, entry in entries:
        if entry not in seen:
            seen.add(entry)
            yield index, entry


def qualify(workstream_id: str, ref: str) -> str:
    """A ``depends_on`` entry as a task key: a bare task id means one of the same workstream."""
    return ref if TASK_KEY_SEPARATOR in ref else task_key(workstream_id, ref)


def graph_issues(sources: Sequence[WorkstreamSource]) -> list[PlanIssue]:
    """Problems of the plan made of ``sources`` (in plan order, one workstream each)."""
    issues = _duplicate_ids(sources)
    ambiguous = bool(issues)
    issues += _unknown_dependencies(sources)
    issues += _input_issues(sources)
    if not ambiguous:
        issues += _cycles(sources)
    return issues


def _duplicate_ids(sources: Sequence[WorkstreamSource]) -> list[PlanIssue]:
    issues = []
    first: dict[str, WorkstreamSource] = {}
    for source in sources:
        if source.id in first:
            other = first[source.id]
            issues.append(
                PlanIssue(
                    source.file,
                    f"{source.json_path}.id",
                    f"duplicate workstream id {source.id!r}, "
                    f"also defined in {other.file} at {other.json_path}",
                )
            )
            continue
        first[source.id] = source
        seen: dict[str, int] = {}
        for index, task in source.tasks():
            if task["id"] in seen:
                issues.append(
                    PlanIssue(
                        source.file,
                        f"{source.json_path}.tasks[{index}].id",
                        f"duplicate task id {task['id']!r} in workstream {source.id!r}, "
                        f"first at {source.json_path}.tasks[{seen[task['id']]}]",
                    )
                )
            seen.setdefault(task["id"], index)
    return issues


def _unknown_dependencies(sources: Sequence[WorkstreamSource]) -> list[PlanIssue]:
    task_ids: dict[str, set[str]] = {}
    for source in sources:
        if source.id not in task_ids:
            task_ids[source.id] = {task["id"] for _, task in source.tasks()} | set(source.groups)
    # A listing sorts its names: made once per workstream, not once per bad reference.
    listings: dict[str | None, str] = {}

    def listing(ws_id: str | None) -> str:
        if ws_id not in listings:
            listings[ws_id] = _listing(task_ids if ws_id is None else task_ids[ws_id])
        return listings[ws_id]

    issues = []
    for source in sources:
        ws_id = source.id
        for index, dep in source.depends_on():
            where = f"{source.json_path}.depends_on[{index}]"
            if dep == ws_id:
                issues.append(
                    PlanIssue(source.file, where, f"workstream {ws_id!r} depends on itself")
                )
            elif dep not in task_ids:
                issues.append(
                    PlanIssue(source.file, where, f"unknown workstream {dep!r} (known: {listing(None)})")
                )
        for t_index, task in source.tasks():
            own = task_key(ws_id, task["id"])
            # An expansion of a matrix task depending on its own task depends on itself.
            own_group = task_key(ws_id, task["id"].partition("[")[0])
            # A repeated entry is the schema's complaint; its target is judged once.
            for d_index, ref in _first_mentions(task_depends_on(task)):
                where = f"{source.json_path}.tasks[{t_index}].depends_on[{d_index}]"
                dep_ws, _, dep_task = qualify(ws_id, ref).partition(TASK_KEY_SEPARATOR)
                if qualify(ws_id, ref) in (own, own_group):
                    issues.append(PlanIssue(source.file, where, f"task {own!r} depends on itself"))
                elif dep_ws not in task_ids:
                    issues.append(
                        PlanIssue(
                            source.file,
                            where,
                            f"unknown workstream {dep_ws!r} in task dependency {ref!r} "
                            f"(known: {listing(None)})",
                        )
                    )
                elif dep_task not in task_ids[dep_ws]:
                    issues.append(
                        PlanIssue(
                            source.file,
                            where,
                            f"unknown task {ref!r}: workstream {dep_ws!r} has no task {dep_task!r} "
                            f"(its tasks: {listing(dep_ws)})",
                        )
                    )
    return issues


# The tools a task's ``inputs`` can be given to: a callable's keyword arguments, a shell
# command's $ORCHESTRATE_INPUTS file.
INPUT_TOOLS = frozenset({"python", "shell"})


def _input_issues(sources: Sequence[WorkstreamSource]) -> list[PlanIssue]:
    """Each ``inputs`` entry must name a task this one depends on (so its result exists when
    this one starts), a tool that can take inputs, and no name a ``kwargs`` entry has too."""
    issues = []
    groups = matrix_groups(sources)
    for source in sources:
        ws_deps = {dep for _, dep in source.depends_on()}
        for t_index, task in source.tasks():
            inputs = task.get("inputs")
            if not isinstance(inputs, dict) or not inputs:
                continue
            own = task_key(source.id, task["id"])
            where = f"{source.json_path}.tasks[{t_index}].inputs"
            if task.get("tool") not in INPUT_TOOLS:
                issues.append(PlanIssue(source.file, where, f"task {own!r} has tool {task.get('tool')!r}, which "
                                        "takes no inputs; only python and shell tasks do"))
                continue
            # A dependency on a matrix task is one on each of its expansions.
            deps = {key for _, ref in task_depends_on(task)
                    for key in groups.get(qualify(source.id, ref), (qualify(source.id, ref),))}
            kwargs = task.get("kwargs") if isinstance(task.get("kwargs"), dict) else {}
            for name, ref in inputs.items():
                if not isinstance(ref, str):
                    continue  # the schema's complaint
                upstream = qualify(source.id, ref)
                if name in kwargs:
                    issues.append(PlanIssue(source.file, f"{where}.{name}", f"input {name!r} of task {own!r} is "
                                            "also one of its kwargs; rename one of them"))
                elif upstream in groups:
                    issues.append(PlanIssue(source.file, f"{where}.{name}", f"input {name!r} of task {own!r} names "
                                            f"the matrix task {upstream!r}, which has one result per expansion; "
                                            f"name one of them, e.g. {groups[upstream][0]!r}"))
                elif upstream not in deps and upstream.partition(TASK_KEY_SEPARATOR)[0] not in ws_deps:
                    issues.append(PlanIssue(source.file, f"{where}.{name}", f"input {name!r} of task {own!r} names "
                                            f"{upstream!r}, which is not a dependency of it; add {ref!r} to its "
                                            "depends_on"))
    return issues


def _cycles(sources: Sequence[WorkstreamSource]) -> list[PlanIssue]:
    """Workstream cycles, then task cycles (explicit links plus those workstreams imply)."""
    source_of = {source.id: source for source in sources}
    ws_graph = {
        source.id: [dep for _, dep in source.depends_on() if dep != source.id and dep in source_of]
        for source in sources
    }
    issues = []
    for cycle in find_cycles(ws_graph):
        source = source_of[cycle[0]]
        index = next(i for i, dep in source.depends_on() if dep == cycle[1])
        members = " -> ".join(cycle)
        issues.append(
            PlanIssue(
                source.file,
                f"{source.json_path}.depends_on[{index}]",
                f"cycle: {members} (workstreams; each depends on the next)",
            )
        )
    return issues + _task_cycles(source_of, ws_graph)


@dataclass(frozen=True, slots=True)
class _TaskAt:
    source: WorkstreamSource
    index: int
    data: Mapping[str, Any]


def _task_cycles(
    source_of: Mapping[str, WorkstreamSource], ws_graph: Mapping[str, list[str]]
) -> list[PlanIssue]:
    tasks: dict[str, _TaskAt] = {}
    for source in source_of.values():
        for index, data in source.tasks():
            tasks[task_key(source.id, data["id"])] = _TaskAt(source, index, data)
    groups = matrix_groups(source_of.values())
    # A dependency on the task itself (or, for an expansion, on its own matrix task) is
    # reported as such, not as a cycle.
    explicit = {
        key: {
            dep
            for _, ref in task_depends_on(at.data)
            if qualify(at.source.id, ref) != key.partition("[")[0]
            for dep in groups.get(qualify(at.source.id, ref), (qualify(at.source.id, ref),))
            if dep != key and dep in tasks
        }
        for key, at in tasks.items()
    }
    # Inside a workstream cycle every task is on a cycle already reported above; only the links
    # a workstream dependency adds across components (and explicit ones) can form new cycles.
    component_of = {
        ws_id: index
        for index, members in enumerate(cyclic_components(ws_graph))
        for ws_id in members
    }

    def implied(ws_id: str) -> list[str]:
        component = component_of.get(ws_id)
        return [
            _WHOLE + dep
            for dep in ws_graph[ws_id]
            if component is None or component != component_of.get(dep)
        ]

    implied_of = {ws_id: implied(ws_id) for ws_id in ws_graph}
    # Task keys first, so a cycle starts at a task (graph ranks nodes by key order).
    graph: dict[str, list[str]] = {
        key: [*explicit[key], *implied_of[at.source.id]] for key, at in tasks.items()
    }
    for ws_id in sorted({node[len(_WHOLE):] for nodes in implied_of.values() for node in nodes}):
        graph[_WHOLE + ws_id] = [task_key(ws_id, data["id"]) for _, data in source_of[ws_id].tasks()]

    issues = []
    for cycle in find_cycles(graph):
        members = [node for node in cycle if not node.startswith(_WHOLE)]
        links = list(pairwise(members))
        # Links implied by workstreams alone cannot close a cycle here, so an explicit one exists.
        first, target = next((u, v) for u, v in links if v in explicit[u])
        at = tasks[first]
        via = [
            f"{u} -> {v} because workstream {tasks[u].source.id!r} "
            f"depends on {tasks[v].source.id!r}"
            for u, v in links
            if v not in explicit[u]
        ]
        detail = "; ".join(["each depends on the next", *via])
        issues.append(
            PlanIssue(
                at.source.file,
                _dependency_path(at, target, groups),
                f"cycle: {' -> '.join(members)} ({detail})",
            )
        )
    return issues


def matrix_groups(sources: Iterable[WorkstreamSource]) -> dict[str, tuple[str, ...]]:
    """Each matrix task's key (``ws/tests``) and its expansions' keys, across ``sources``."""
    return {
        task_key(source.id, group): tuple(task_key(source.id, member) for member in members)
        for source in sources
        for group, members in source.groups.items()
    }


def _dependency_path(at: _TaskAt, target: str, groups: Mapping[str, tuple[str, ...]]) -> str:
    """The JSON path of the ``depends_on`` entry of the task ``at`` that names ``target`` (or
    the matrix task it is an expansion of)."""
    d_index = next(
        i for i, ref in task_depends_on(at.data)
        if target in groups.get(qualify(at.source.id, ref), (qualify(at.source.id, ref),))
    )
    return f"{at.source.json_path}.tasks[{at.index}].depends_on[{d_index}]"


def _listing(names: Iterable[str]) -> str:
    ordered = sorted(names)
    if not ordered:
        return "none"
    shown = ", ".join(ordered[:_LISTED])
    return shown + (f", ... ({len(ordered)} in all)" if len(ordered) > _LISTED else "")
