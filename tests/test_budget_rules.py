"""Budgets, decided by the run core alone (no processes): a spent budget stops new agent
attempts — never shell steps, never attempts already running — and blocks what waits on them."""

from __future__ import annotations

from dataclasses import replace

from domain.outcomes import COMPLETED
from domain.routing import AdapterInfo
from domain.run_events import AttemptEnded
from domain.states import TaskState
from tests.test_run_core import plan, task
from tests.test_run_core_gaps import Core

AGENT = AdapterInfo("claude", "agent")
SHELL = AdapterInfo("shell", "shell")


def core() -> Core:
    return Core(adapters=(AGENT, SHELL))


def finish(c: Core, key: str, cost: float | None) -> None:
    c.start("r", key)
    c.feed(AttemptEnded("r", key, c.attempt("r", key), COMPLETED, 0.1, cost_usd=cost))


def test_a_task_over_its_max_cost_is_blocked_before_its_next_attempt_and_so_are_its_dependants():
    c = core()
    c.route_to = {"w/b": "shell"}
    the_plan = plan(task("w", "a", tool="agent", max_cost_usd=0.05), task("w", "b", "w/a"))
    c.open("r", the_plan, costs={"w/a": 0.05})
    assert c.state("r", "w/a") is TaskState.BLOCKED
    assert c.state("r", "w/b") is TaskState.BLOCKED
    noted = c.noted("BUDGET_EXHAUSTED")
    assert [n.payload["reason"] for n in noted] == ["budget: task w/a has cost $0.05 of its max_cost_usd $0.05"]
    assert c.dispatched() == []


def test_a_spent_run_budget_stops_agent_steps_but_not_shell_steps_and_running_attempts_finish():
    c = core()
    c.route_to = {"w/a": "claude", "w/b": "claude", "x/s": "shell"}
    the_plan = replace(plan(task("w", "a", tool="agent"), task("w", "b", tool="agent"), task("x", "s")),
                       budget_usd=0.01)
    c.open("r", the_plan)
    assert sorted(c.dispatched()) == ["w/a", "w/b", "x/s"], "nothing spent yet: all start"
    finish(c, "w/a", 0.02)  # spent: but b is already running and finishes normally
    finish(c, "w/b", 0.001)
    finish(c, "x/s", None)
    assert [c.state("r", k) for k in ("w/a", "w/b", "x/s")] == [TaskState.COMPLETED] * 3
    assert c.core.runs == {}, "the run finished"


def test_a_workstream_budget_counts_only_that_workstreams_spending_including_a_resumed_runs():
    c = core()
    c.route_to = {"w/a": "claude", "w/b": "claude", "v/c": "claude"}
    ws_plan = plan(task("w", "a", tool="agent"), task("w", "b", "w/a", tool="agent"), task("v", "c", tool="agent"))
    limited = replace(ws_plan, workstreams=tuple(
        replace(ws, budget_usd=0.03) if ws.id == "w" else ws for ws in ws_plan.workstreams))
    c.open("r", limited, costs={"v/c": 5.0})  # another workstream's spending does not count
    finish(c, "w/a", 0.03)
    assert c.state("r", "w/b") is TaskState.BLOCKED
    assert "budget: workstream w has spent $0.03 of its budget_usd $0.03" in [
        n.payload["reason"] for n in c.noted("BUDGET_EXHAUSTED")]
    finish(c, "v/c", 0.0)
    assert c.state("r", "v/c") is TaskState.COMPLETED
