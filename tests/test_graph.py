"""Pure dependency-graph functions shared by the loader and the scheduler."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.graph import (
    CycleError,
    cyclic_components,
    find_cycle,
    find_cycles,
    task_dependencies,
    topological_order,
)
from domain.plan import Plan, TaskSpec, Workstream


def test_acyclic_graph_has_no_cycle() -> None:
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None
    assert find_cycles({}) == []


def test_cycle_starts_and_ends_with_the_first_member_in_dependency_order() -> None:
    graph = {"x": [], "a": ["b"], "b": ["c"], "c": ["a"]}

    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_cycle_is_a_shortest_one_through_its_first_member() -> None:
    graph = {"a": ["b", "d"], "b": ["c"], "c": ["a"], "d": ["a"]}

    assert find_cycle(graph) == ["a", "d", "a"]


def test_node_depending_on_itself_is_a_cycle_of_one() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_one_cycle_is_reported_per_independent_knot() -> None:
    graph = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["e"], "e": ["c"], "f": ["a", "c"]}

    assert find_cycles(graph) == [["a", "b", "a"], ["c", "d", "e", "c"]]
    assert cyclic_components(graph) == [frozenset({"a", "b"}), frozenset({"c", "d", "e"})]


def test_result_does_not_depend_on_how_dependencies_are_collected() -> None:
    as_lists = {"a": ["c", "b"], "b": ["a"], "c": ["a"]}
    as_sets = {node: frozenset(deps) for node, deps in as_lists.items()}

    assert find_cycle(as_sets) == find_cycle(as_lists) == ["a", "b", "a"]


def test_topological_order_puts_dependencies_first_and_ties_in_insertion_order() -> None:
    graph = {"deploy": ["build", "test"], "test": ["build"], "docs": [], "build": []}

    assert topological_order(graph) == ["docs", "build", "test", "deploy"]


def test_topological_order_includes_nodes_only_named_as_dependencies() -> None:
    assert topological_order({"a": ["z", "y"]}) == ["y", "z", "a"]


def test_topological_order_refuses_a_cycle_naming_it() -> None:
    with pytest.raises(CycleError) as caught:
        topological_order({"a": ["b"], "b": ["a"], "c": []})

    assert caught.value.cycle == ["a", "b", "a"]
    assert str(caught.value) == "cycle: a -> b -> a"


def test_long_chains_do_not_exhaust_the_stack() -> None:
    size = 20_000
    chain = {f"n{i}": [f"n{i + 1}"] for i in range(size)} | {f"n{size}": ["n0"]}

    cycle = find_cycle(chain)

    assert cycle is not None and len(cycle) == size + 2
    assert (
        topological_order({f"n{i}": [f"n{i + 1}"] if i < size else [] for i in range(size + 1)})[0]
        == f"n{size}"
    )


graphs = st.dictionaries(
    st.sampled_from("abcdefgh"), st.lists(st.sampled_from("abcdefgh"), max_size=3), max_size=8
)


@settings(max_examples=200, deadline=None)
@given(graph=graphs)
def test_either_an_order_respecting_every_edge_or_a_real_cycle(graph: dict[str, list[str]]) -> None:
    cycle = find_cycle(graph)
    if cycle is None:
        position = {node: index for index, node in enumerate(topological_order(graph))}
        assert all(position[dep] < position[node] for node, deps in graph.items() for dep in deps)
    else:
        assert cycle[0] == cycle[-1]
        assert all(after in graph.get(before, ()) for before, after in pairwise(cycle))
        with pytest.raises(CycleError):
            topological_order(graph)


def _plan() -> Plan:
    def task(ws: str, task_id: str, *deps: str) -> TaskSpec:
        return TaskSpec(workstream_id=ws, id=task_id, tool="shell", command="true", depends_on=deps)

    return Plan(
        workstreams=(
            Workstream("model", tasks=(task("model", "a"), task("model", "b", "model/a"))),
            Workstream(
                "api", depends_on=("model",), tasks=(task("api", "x"), task("api", "y", "api/x"))
            ),
            Workstream("docs", tasks=(task("docs", "d", "api/y"),)),
        ),
        source="plan",
        base_dir="/plan",
    )


def test_task_dependencies_add_every_task_of_the_workstreams_depended_on() -> None:
    deps = task_dependencies(_plan())

    assert list(deps) == ["model/a", "model/b", "api/x", "api/y", "docs/d"]
    assert deps["model/a"] == frozenset()
    assert deps["model/b"] == {"model/a"}
    assert deps["api/x"] == {"model/a", "model/b"}
    assert deps["api/y"] == {"api/x", "model/a", "model/b"}
    assert deps["docs/d"] == {"api/y"}


def test_task_dependencies_give_a_schedulable_order() -> None:
    assert topological_order(task_dependencies(_plan())) == [
        "model/a",
        "model/b",
        "api/x",
        "api/y",
        "docs/d",
    ]
