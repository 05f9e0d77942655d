"""Where to draw a run: a layered layout of a dependency graph, and lanes for a timeline.

Pure geometry, no I/O: the report and the dashboard draw what these functions return.

- :func:`layered_layout` puts every node in the column of its longest dependency path (a node
  is always right of everything it depends on), orders each column to shorten edges (one
  barycentre sweep), and wraps a column taller than ``max_rows`` into several sub-columns so a
  layer of a thousand independent tasks stays readable.
- :func:`assign_lanes` gives each time interval the lowest lane free at its start (greedy
  interval partitioning): the fewest lanes any drawing without overlaps can use, which for
  attempts of one adapter is the slots it actually used at once.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from domain.graph import topological_order

NODE_WIDTH = 170.0
NODE_HEIGHT = 22.0
COLUMN_GAP = 40.0
SUBCOLUMN_GAP = 12.0
ROW_GAP = 6.0
MARGIN = 10.0


@dataclass(frozen=True, slots=True)
class Placed:
    """A node's box: top-left corner and size, in SVG user units."""

    key: str
    layer: int
    x: float
    y: float
    width: float = NODE_WIDTH
    height: float = NODE_HEIGHT


@dataclass(frozen=True, slots=True)
class Layout:
    """Every node placed (in input order), the edges to draw as (from, to), and the canvas."""

    nodes: tuple[Placed, ...]
    edges: tuple[tuple[str, str], ...]
    width: float
    height: float
    layers: int


def longest_path_layers(order: Sequence[str], deps: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Each node's layer: 0 without dependencies, else one more than its deepest dependency.

    ``order`` lists every node; dependencies naming nodes not in ``order`` are ignored. Raises
    :class:`domain.graph.CycleError` on a cycle.
    """
    known = set(order)
    graph = {node: frozenset(d for d in deps.get(node, ()) if d in known) for node in order}
    layer: dict[str, int] = {}
    for node in topological_order(graph):
        layer[node] = 1 + max((layer[d] for d in graph[node]), default=-1)
    return layer


def layered_layout(
    order: Sequence[str],
    deps: Mapping[str, Iterable[str]],
    *,
    edges_of: Mapping[str, Iterable[str]] | None = None,
    max_rows: int = 40,
) -> Layout:
    """Place ``order``'s nodes left to right by :func:`longest_path_layers` of ``deps``.

    ``edges_of`` (default ``deps``) says which dependencies are drawn: a caller may lay out by
    every dependency yet draw only the direct ones. Within a column nodes keep ``order``'s
    order, then are sorted by the mean row of what they depend on (stable, so ties keep
    ``order``). A column of more than ``max_rows`` nodes is wrapped into sub-columns.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    layer_of = longest_path_layers(order, deps)
    drawn = deps if edges_of is None else edges_of
    layers = 1 + max(layer_of.values(), default=-1)
    columns: list[list[str]] = [[] for _ in range(layers)]
    for node in order:
        columns[layer_of[node]].append(node)

    row: dict[str, float] = {}
    for column in columns:
        def barycentre(node: str) -> float:
            placed = [row[d] for d in drawn.get(node, ()) if d in row]
            return sum(placed) / len(placed) if placed else -1.0

        column.sort(key=barycentre)
        for index, node in enumerate(column):
            row[node] = float(index)

    placed: dict[str, Placed] = {}
    x = MARGIN
    height = 0.0
    for index, column in enumerate(columns):
        subcolumns = max(1, -(-len(column) // max_rows))
        for position, node in enumerate(column):
            sub, rank = divmod(position, max_rows)
            y = MARGIN + rank * (NODE_HEIGHT + ROW_GAP)
            placed[node] = Placed(node, index, x + sub * (NODE_WIDTH + SUBCOLUMN_GAP), y)
            height = max(height, y + NODE_HEIGHT)
        x += subcolumns * NODE_WIDTH + (subcolumns - 1) * SUBCOLUMN_GAP + COLUMN_GAP
    known = set(placed)
    edges = tuple((dep, node) for node in order for dep in drawn.get(node, ()) if dep in known)
    width = x - COLUMN_GAP + MARGIN if placed else 2 * MARGIN
    return Layout(tuple(placed[node] for node in order), edges, width, height + MARGIN, layers)


def assign_lanes(intervals: Sequence[tuple[float, float]]) -> list[int]:
    """The lane of each ``(start, end)`` interval, in input order: the lowest lane whose last
    interval ended at or before this one's start. Intervals are taken by start time (ties: input
    order); an interval with ``end < start`` counts as ending at its start."""
    by_start = sorted(range(len(intervals)), key=lambda i: (intervals[i][0], i))
    free: list[int] = []  # lanes whose interval has ended, lowest first
    busy: list[tuple[float, int]] = []  # (end, lane) of lanes in use
    lanes = [0] * len(intervals)
    count = 0
    for index in by_start:
        start, end = intervals[index]
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, count = count, count + 1
        lanes[index] = lane
        heapq.heappush(busy, (max(start, end), lane))
    return lanes
