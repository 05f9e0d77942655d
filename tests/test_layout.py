"""The geometry of the report's drawings (domain/layout.py), fed directly."""

from __future__ import annotations

import pytest

from domain.graph import CycleError
from domain.layout import (
    NODE_HEIGHT,
    NODE_WIDTH,
    assign_lanes,
    layered_layout,
    longest_path_layers,
)


def test_a_node_sits_one_layer_right_of_its_deepest_dependency():
    deps = {"b": ["a"], "c": ["a", "b"], "d": []}
    assert longest_path_layers(["a", "b", "c", "d"], deps) == {"a": 0, "b": 1, "c": 2, "d": 0}


def test_every_edge_points_right_and_no_two_boxes_overlap():
    order = [f"n{i}" for i in range(60)]
    deps = {f"n{i}": [f"n{i - 7}", f"n{i - 3}"] for i in range(7, 60)}
    layout = layered_layout(order, deps, max_rows=5)
    box = {p.key: p for p in layout.nodes}
    for source, target in layout.edges:
        assert box[source].x + NODE_WIDTH < box[target].x
    corners = {(p.x, p.y) for p in layout.nodes}
    assert len(corners) == len(order)
    for p in layout.nodes:
        assert p.x + NODE_WIDTH <= layout.width and p.y + NODE_HEIGHT <= layout.height


def test_a_wide_layer_wraps_into_subcolumns_of_at_most_max_rows():
    order = [f"t{i}" for i in range(1000)]
    layout = layered_layout(order, {}, max_rows=40)
    assert layout.layers == 1
    assert len({p.x for p in layout.nodes}) == 25
    assert max(p.y for p in layout.nodes) == min(p.y for p in layout.nodes) + 39 * (NODE_HEIGHT + 6)


def test_layout_may_follow_every_dependency_while_drawing_only_some():
    deps = {"b": ["a"], "c": ["b"]}
    layout = layered_layout(["a", "b", "c"], deps, edges_of={"c": ["b"]})
    assert layout.edges == (("b", "c"),)
    assert [p.layer for p in layout.nodes] == [0, 1, 2]


def test_a_column_is_ordered_by_where_its_dependencies_are():
    # x and y are in layer 0 (y above x after input order), their dependants come in reverse.
    layout = layered_layout(["y", "x", "from_x", "from_y"], {"from_x": ["x"], "from_y": ["y"]})
    row = {p.key: p.y for p in layout.nodes}
    assert row["from_y"] < row["from_x"]


def test_a_cycle_is_refused_and_unknown_dependencies_are_ignored():
    with pytest.raises(CycleError):
        layered_layout(["a", "b"], {"a": ["b"], "b": ["a"]})
    assert layered_layout(["a"], {"a": ["gone"]}).edges == ()
    with pytest.raises(ValueError):
        layered_layout(["a"], {}, max_rows=0)


def test_lanes_are_the_fewest_that_keep_intervals_apart_and_reuse_the_lowest_free_one():
    intervals = [(0, 10), (1, 3), (2, 4), (3, 5), (10, 11), (4, 6)]
    lanes = assign_lanes(intervals)
    assert lanes == [0, 1, 2, 1, 0, 2]
    for i, (a_start, a_end) in enumerate(intervals):
        for j, (b_start, b_end) in enumerate(intervals):
            if i < j and lanes[i] == lanes[j]:
                assert a_end <= b_start or b_end <= a_start


def test_lanes_of_nothing_and_of_an_interval_ending_before_it_starts():
    assert assign_lanes([]) == []
    assert assign_lanes([(5, 1), (5, 6)]) == [0, 0]
