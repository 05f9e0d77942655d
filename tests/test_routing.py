"""Routing rules and strategies, and router_config.json validation."""

import json

import pytest

from domain.routing import AdapterInfo, RouterConfig, RoutingTable, Rule, Strategy, default_config
from planning.errors import PlanError
from domain.plan import TaskSpec
from planning.router_config import load_router_config


def task(tool="shell", tags=(), files=(), kind=None, id="t"):
    return TaskSpec("w", id, tool, command="true", tags=tuple(tags), files=tuple(files), kind=kind)


TWO_SHELLS = RouterConfig(
    adapters=(AdapterInfo("sh-a", "shell"), AdapterInfo("sh-b", "shell"), AdapterInfo("py", "python")),
    rules=(Rule(adapters=("sh-a", "sh-b"), strategy=Strategy.ROUND_ROBIN, tool="shell"),),
)


def test_without_rules_a_task_goes_to_the_adapter_serving_its_tool():
    decision = RoutingTable(default_config()).route(task("python"))
    assert decision.chosen == "python" and "tool 'python'" in decision.reason


def test_an_unknown_tool_is_not_routed_and_the_served_tools_are_listed():
    decision = RoutingTable(default_config()).route(task("aider"))
    assert not decision.routed and "aider" in decision.reason and "shell" in decision.reason


def test_round_robin_spreads_tasks_over_two_instances():
    table = RoutingTable(TWO_SHELLS)
    chosen = [table.route(task(id=f"t{i}")).chosen for i in range(4)]
    assert chosen == ["sh-a", "sh-b", "sh-a", "sh-b"]


def test_rules_match_by_tags_kind_and_file_globs_in_order():
    config = RouterConfig(
        adapters=(AdapterInfo("fast", "shell"), AdapterInfo("big", "shell"), AdapterInfo("docs", "shell")),
        rules=(
            Rule(adapters=("docs",), files=("docs/*.md",)),
            Rule(adapters=("big",), tags=("heavy",), kind="build"),
            Rule(adapters=("fast",), tool="shell"),
        ),
    )
    table = RoutingTable(config)
    assert table.route(task(files=["docs/intro.md"])).chosen == "docs"
    assert table.route(task(tags=["heavy", "x"], kind="build")).chosen == "big"
    assert table.route(task(tags=["heavy"])).chosen == "fast"


def test_auto_skips_an_adapter_whose_circuit_is_open_and_prefers_the_least_loaded():
    config = RouterConfig(
        adapters=(AdapterInfo("a", "shell"), AdapterInfo("b", "shell"), AdapterInfo("c", "shell")),
        rules=(Rule(adapters=("a", "b", "c"), strategy=Strategy.AUTO),),
    )
    table = RoutingTable(config)
    assert table.route(task(), load={"a": 3, "b": 1, "c": 2}).chosen == "b"
    decision = table.route(task(), open_circuits=frozenset({"b"}), load={"a": 3, "b": 0, "c": 2})
    assert decision.chosen == "c"


def test_an_open_circuit_sends_tasks_to_the_fallback_or_holds_them():
    config = RouterConfig(adapters=(AdapterInfo("flaky", "shell", fallback="steady"), AdapterInfo("steady", "python")))
    table = RoutingTable(config)
    assert table.route(task()).chosen == "flaky"
    to_fallback = table.route(task(), open_circuits=frozenset({"flaky"}))
    assert to_fallback.chosen == "steady" and "fallback" in to_fallback.reason
    held = table.route(task(), open_circuits=frozenset({"flaky", "steady"}))
    assert held.chosen == "flaky" and "waiting" in held.reason


def write(tmp_path, document):
    path = tmp_path / "router_config.json"
    path.write_text(json.dumps(document))
    return path


def test_a_router_config_file_loads_adapters_breakers_and_rules(tmp_path):
    path = write(tmp_path, {
        "adapters": [
            {"name": "sh", "type": "shell", "concurrency": 2, "fallback": "py",
             "breaker": {"max_failures": 2, "reset_timeout_s": 0.5}},
            {"name": "py", "type": "python"}],
        "rules": [{"match": {"tags": ["x"]}, "adapters": ["sh", "py"], "strategy": "auto"}]})
    config = load_router_config(path)
    assert config.adapter("sh").breaker.max_failures == 2 and config.adapter("sh").concurrency == 2
    assert config.rules[0].strategy is Strategy.AUTO


@pytest.mark.parametrize(
    ("document", "path", "words"),
    [
        ({"adapters": []}, "$.adapters", "non-empty"),
        ({"adapters": [{"name": "x", "type": "teleport"}]}, "$.adapters[0].type", "shell"),
        ({"adapters": [{"name": "x", "type": "custom"}]}, "$.adapters[0]", "class"),
        ({"adapters": [{"name": "x", "type": "shell"}, {"name": "x", "type": "shell"}]}, "$.adapters[1].name", "duplicate"),
        ({"adapters": [{"name": "x", "type": "shell", "fallback": "y"}]}, "$.adapters[0].fallback", "unknown adapter 'y'"),
        ({"adapters": [{"name": "x", "type": "shell"}], "rules": [{"adapters": ["z"]}]}, "$.rules[0].adapters[0]", "unknown adapter 'z'"),
    ],
)
def test_a_bad_router_config_names_the_file_path_and_reason(tmp_path, document, path, words):
    with pytest.raises(PlanError) as raised:
        load_router_config(write(tmp_path, document))
    text = str(raised.value)
    assert "router_config.json" in text and path in text and words in text, text


def test_orchestrate_route_shows_where_each_task_would_go_without_running(tmp_path, orchestrate):
    write(tmp_path, {
        "adapters": [{"name": "sh-a", "type": "shell"}, {"name": "sh-b", "type": "shell"},
                     {"name": "py", "type": "python"}],
        "rules": [{"name": "spread", "match": {"tool": "shell"}, "adapters": ["sh-a", "sh-b"],
                   "strategy": "round_robin"}]})
    (tmp_path / "plan.json").write_text(json.dumps({"id": "w", "tasks": [
        {"id": f"s{i}", "tool": "shell", "command": "touch ran"} for i in range(3)] + [
        {"id": "p", "tool": "python", "callable": "m:f"}]}))
    result = orchestrate("route", "plan.json", "--json")
    assert result.code == 0, result.err
    assert [(d["task"], d["chosen"]) for d in result.json()] == [
        ("w/s0", "sh-a"), ("w/s1", "sh-b"), ("w/s2", "sh-a"), ("w/p", "py")]
    assert "rule 'spread'" in result.json()[0]["reason"]
    text = orchestrate("route", "plan.json")
    assert "round_robin" in text.out and "sh-b" in text.out
    assert not (tmp_path / "ran").exists() and not (tmp_path / ".state").exists()


def test_round_robin_spreads_real_tasks_over_two_executor_instances(tmp_path, orchestrate):
    write(tmp_path, {
        "adapters": [{"name": "sh-a", "type": "shell"}, {"name": "sh-b", "type": "shell"}],
        "rules": [{"match": {"tool": "shell"}, "adapters": ["sh-a", "sh-b"], "strategy": "round_robin"}]})
    (tmp_path / "plan.json").write_text(json.dumps({"id": "w", "tasks": [
        {"id": f"s{i}", "tool": "shell", "command": "true"} for i in range(6)]}))
    result = orchestrate("run", "plan.json")
    assert result.code == 0, result.out + result.err
    db = __import__("sqlite3").connect(tmp_path / ".state" / "orchestration.db")
    used = [row[0] for row in db.execute("select adapter from step_attempts order by id")]
    assert sorted(used) == ["sh-a"] * 3 + ["sh-b"] * 3
