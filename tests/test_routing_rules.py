"""Routing decisions in full: the task, its candidates, the adapter chosen and the reason a
person reads in `orchestrate route`."""

from __future__ import annotations

import pytest

from domain.plan import TaskSpec
from domain.routing import (
    AdapterInfo,
    RouteDecision,
    RouterConfig,
    RoutingTable,
    Rule,
    Strategy,
)


def task(tool="shell", tags=(), files=(), kind=None, id="t"):
    return TaskSpec("w", id, tool, command="true", tags=tuple(tags), files=tuple(files), kind=kind)


def shells(*names, **rule):
    return RouterConfig(adapters=tuple(AdapterInfo(n, "shell") for n in names),
                        rules=(Rule(adapters=tuple(names), **rule),) if rule else ())


def test_a_fixed_rule_names_the_adapters_it_skipped_for_an_open_circuit():
    table = RoutingTable(shells("a", "b", "c", strategy=Strategy.FIXED, name="main"))
    assert table.route(task(), open_circuits=frozenset({"a", "b"})) == RouteDecision(
        "w/t", ("a", "b", "c"), "c", "rule 'main' -> c (fixed, skipping open circuit of a, b)")
    assert table.route(task()) == RouteDecision("w/t", ("a", "b", "c"), "a", "rule 'main' -> a (fixed)")


def test_an_unnamed_rule_is_called_by_its_position_counting_from_one():
    config = RouterConfig(adapters=(AdapterInfo("a", "shell"), AdapterInfo("b", "shell")),
                          rules=(Rule(adapters=("a",), tool="python"), Rule(adapters=("b",))))
    assert RoutingTable(config).route(task()).reason == "rule #2 -> b (fixed)"


def test_a_task_no_rule_matches_goes_to_the_adapters_serving_its_tool():
    assert RoutingTable(shells("a", "b")).route(task()) == RouteDecision("w/t", ("a", "b"), "a", "tool 'shell' -> a (fixed)")


def test_an_unserved_tool_lists_every_tool_that_is_served():
    config = RouterConfig(adapters=(AdapterInfo("a", "shell"), AdapterInfo("p", "python", tools=("python", "py"))))
    assert RoutingTable(config).route(task("aider")) == RouteDecision(
        "w/t", (), "", "no adapter serves tool 'aider' (served: py, python, shell)")


@pytest.mark.parametrize(
    ("rule", "matching", "not_matching"),
    [
        (Rule(adapters=("x",), tool="python"), task("python"), task("shell")),
        (Rule(adapters=("x",), kind="build"), task(kind="build"), task(kind="test")),
        # Every tag of the rule, exactly or among others.
        (Rule(adapters=("x",), tags=("heavy", "gpu")), task(tags=("gpu", "heavy")), task(tags=("heavy",))),
        (Rule(adapters=("x",), files=("src/*.py",)), task(files=("README", "src/a.py")), task(files=("docs/a.md",))),
    ],
)
def test_a_rule_matches_only_tasks_with_everything_it_names(rule, matching, not_matching):
    assert rule.matches(matching)
    assert not rule.matches(not_matching)


def test_round_robin_takes_candidates_in_turn_and_skips_an_open_circuit_to_the_next_in_turn():
    table = RoutingTable(shells("a", "b", "c", strategy=Strategy.ROUND_ROBIN))
    assert [table.route(task()).chosen for _ in range(4)] == ["a", "b", "c", "a"]
    # Turn 4 is b's; b is open, so the next in turn (c) takes it, not the one before.
    decision = table.route(task(), open_circuits=frozenset({"b"}))
    assert decision == RouteDecision("w/t", ("a", "b", "c"), "c", "rule #1 -> c (round_robin)")


def test_each_round_robin_rule_keeps_its_own_turn():
    config = RouterConfig(
        adapters=(AdapterInfo("a", "shell"), AdapterInfo("b", "shell")),
        rules=(Rule(adapters=("a", "b"), strategy=Strategy.ROUND_ROBIN, kind="build"),
               Rule(adapters=("a", "b"), strategy=Strategy.ROUND_ROBIN)),
    )
    table = RoutingTable(config)
    assert table.route(task(kind="build")).chosen == "a"
    assert table.route(task()).chosen == "a"


def test_auto_counts_an_adapter_missing_from_the_load_as_idle_and_says_how_many_run():
    table = RoutingTable(shells("a", "b", strategy=Strategy.AUTO))
    assert table.route(task(), load={"a": 1}) == RouteDecision(
        "w/t", ("a", "b"), "b", "rule #1 -> b (auto: least loaded, 0 running)")
    assert table.route(task(), load={"a": 2, "b": 1}).reason == "rule #1 -> b (auto: least loaded, 1 running)"


def test_with_every_candidate_unavailable_the_fallback_takes_the_task_or_it_waits_for_the_first():
    config = RouterConfig(adapters=(AdapterInfo("a", "shell", fallback="f"), AdapterInfo("b", "shell"),
                                    AdapterInfo("f", "python")),
                          rules=(Rule(adapters=("a", "b")),))
    table = RoutingTable(config)
    assert table.route(task(), open_circuits=frozenset({"a"}), dead=frozenset({"b"})) == RouteDecision(
        "w/t", ("a", "b"), "f", "rule #1: circuit of a open, fallback f")
    assert table.route(task(), open_circuits=frozenset({"a", "b"}), dead=frozenset({"f"})) == RouteDecision(
        "w/t", ("a", "b"), "a",
        "rule #1: no candidate available (circuit open or executor down); waiting for a")


def test_an_adapter_not_configured_is_a_key_error_naming_it():
    with pytest.raises(KeyError, match="ghost"):
        shells("a").adapter("ghost")


def test_the_served_tools_are_the_adapters_tools_and_every_tool_a_rule_names():
    config = RouterConfig(adapters=(AdapterInfo("a", "shell"), AdapterInfo("h", "human", tools=())),
                          rules=(Rule(adapters=("h",), tool="review"), Rule(adapters=("a",), kind="x")))
    assert config.served_tools() == {"shell", "review"}


def test_a_workstreams_merge_step_goes_to_the_workspace_whatever_the_rules_say():
    # A catch-all rule would match it, and no adapter serves "integrate": the Workspace merges.
    table = RoutingTable(shells("a", strategy=Strategy.FIXED, name="all"))
    assert table.route(task("integrate", id="merge")) == RouteDecision(
        "w/merge", (), "workspace", "a workstream's merge step: the Workspace does it")
    assert table.route(task("integrate"), open_circuits=frozenset({"workspace"})).chosen == "workspace"
