"""Dependency graphs as plain mappings ``node -> the nodes it depends on``.

Pure functions shared by the loader (validation) and the scheduler (readiness). Results never
depend on set iteration order or hash seeds: nodes are ranked by their position among the
mapping's keys, and nodes that only appear as dependencies come after those, by name.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping

from domain.plan import Plan

Graph = Mapping[str, Iterable[str]]


class CycleError(ValueError):
    """The graph has a cycle; ``cycle`` lists it as :func:`find_cycle` does."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("cycle: " + " -> ".join(cycle))


def task_dependencies(plan: Plan) -> dict[str, frozenset[str]]:
    """Each task key's direct prerequisites, in plan order of the keys.

    A task's prerequisites are its explicit ``depends_on`` plus every task of each workstream
    its own workstream depends on (never its own: the loader refuses that, and counting it would
    make the tasks of a workstream wait for each other). Indirect prerequisites are reachable
    through those, so a task is ready exactly when all of its direct prerequisites are done.
    """
    keys_by_workstream = {ws.id: [task.key for task in ws.tasks] for ws in plan.workstreams}
    result: dict[str, frozenset[str]] = {}
    for ws in plan.workstreams:
        inherited = frozenset(
            key for dep in ws.depends_on if dep != ws.id for key in keys_by_workstream.get(dep, ())
        )
        for task in ws.tasks:
            result[task.key] = frozenset(task.depends_on) | inherited
    return result


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle per strongly connected component that has one, ordered by first member.

    Each cycle is a shortest one through the component's first-ranked node, written in the
    direction of the edges (each member depends on the next) and closed: ``[a, b, a]``. A node
    depending on itself gives ``[a, a]``.
    """
    order, edges = _indexed(graph)
    rank = {node: index for index, node in enumerate(order)}
    return [
        _shortest_cycle_through(min(component, key=rank.__getitem__), edges, component)
        for component in _cyclic_components(order, edges)
    ]


def cyclic_components(graph: Graph) -> list[frozenset[str]]:
    """The strongly connected components that contain a cycle, ordered by first-ranked member.

    Every member of a component can reach every other, so each is on some cycle; nodes on no
    cycle are in none.
    """
    return [frozenset(component) for component in _cyclic_components(*_indexed(graph))]


def find_cycle(graph: Graph) -> list[str] | None:
    """The first of :func:`find_cycles`, or ``None`` when the graph is acyclic."""
    cycles = find_cycles(graph)
    return cycles[0] if cycles else None


def topological_order(graph: Graph) -> list[str]:
    """Every node after all of its dependencies; among ready nodes the first-ranked goes first.

    Nodes that appear only as dependencies are included. Raises :class:`CycleError`.
    """
    order, edges = _indexed(graph)
    rank = {node: index for index, node in enumerate(order)}
    waiting = {node: len(edges[node]) for node in order}
    dependants: dict[str, list[str]] = {node: [] for node in order}
    for node in order:
        for dep in edges[node]:
            dependants[dep].append(node)
    ready = [rank[node] for node in order if waiting[node] == 0]
    heapq.heapify(ready)
    result: list[str] = []
    while ready:
        node = order[heapq.heappop(ready)]
        result.append(node)
        for dependant in dependants[node]:
            waiting[dependant] -= 1
            if waiting[dependant] == 0:
                heapq.heappush(ready, rank[dependant])
    if len(result) < len(order):
        # Kahn's algorithm only stalls on a cycle, so there is one to report.
        raise CycleError(find_cycles(graph)[0])
    return result


def _indexed(graph: Graph) -> tuple[list[str], dict[str, list[str]]]:
    """Ranked nodes and, per node, its distinct dependencies in rank order."""
    raw = {node: set(deps) for node, deps in graph.items()}
    order = list(raw)
    extra = sorted({dep for deps in raw.values() for dep in deps} - raw.keys())
    order.extend(extra)
    rank = {node: index for index, node in enumerate(order)}
    edges = {node: sorted(raw.get(node, ()), key=rank.__getitem__) for node in order}
    return order, edges


def _cyclic_components(order: list[str], edges: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative so that long dependency chains cannot exhaust the stack."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in order:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, next_edge = work.pop()
            if next_edge == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            deps = edges[node]
            if next_edge < len(deps):
                work.append((node, next_edge + 1))
                dep = deps[next_edge]
                if dep not in index:
                    work.append((dep, 0))
                elif dep in on_stack:
                    low[node] = min(low[node], index[dep])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in deps:
                    found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    rank = {node: position for position, node in enumerate(order)}
    return sorted(found, key=lambda component: min(rank[node] for node in component))


def _shortest_cycle_through(start: str, edges: dict[str, list[str]], within: set[str]) -> list[str]:
    """Breadth-first from ``start`` back to itself, staying inside ``within`` (its component)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for dep in edges[node]:
            if dep == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if dep in within and dep not in came_from:
                came_from[dep] = node
                queue.append(dep)
    raise AssertionError(f"{start!r} is on no cycle of its component")
