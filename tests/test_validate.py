"""`orchestrate validate`: every problem at once, as prose or as JSON, and fast on big plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planning.errors import PlanError
from planning.loader import load_plan


def chain(ws_id: str, count: int, deps: int = 2) -> dict:
    """A workstream of ``count`` tasks, each depending on the ``deps`` tasks before it."""
    return {"id": ws_id, "tasks": [
        {"id": f"t{i}", "tool": "shell", "command": "true",
         "depends_on": [f"t{i - k}" for k in range(1, min(deps, i) + 1)]}
        for i in range(count)
    ]}


BROKEN = {"id": "w", "tasks": [
    {"id": "a", "tool": "shell", "command": "true", "timeout_s": "soon", "depends_on": ["ghost"]},
    {"id": "a", "tool": "teleport"},
    {"tool": "shell", "command": "true", "depends_on": ["nowhere"]},
]}
# Schema errors first, then what the graph checks still found; task 2 has no id, so its
# dependency cannot be judged.
BROKEN_PROBLEMS = [
    ("$.tasks[0].timeout_s", "'timeout_s' must be a number > 0, got 'soon'"),
    ("$.tasks[2]", "missing required property 'id'"),
    ("$.tasks[1].id", "duplicate task id 'a' in workstream 'w', first at $.tasks[0]"),
    ("$.tasks[0].depends_on[0]", "unknown task 'ghost': workstream 'w' has no task 'ghost' (its tasks: a)"),
    ("$.tasks[1].tool", "unknown tool 'teleport'; expected one of: human, python, shell"),
]


def test_schema_errors_do_not_hide_the_graph_errors_that_can_still_be_found(tmp_path, write_plan, orchestrate):
    write_plan(BROKEN)

    result = orchestrate("validate", "plan.json")

    assert result.code == 2, result.out + result.err
    assert result.err.splitlines() == [
        f"orchestrate: the plan is not valid ({len(BROKEN_PROBLEMS)} problems):",
        *[f"  plan.json: {path}: {message}" for path, message in BROKEN_PROBLEMS],
    ]
    assert "Traceback" not in result.err


def test_a_workstream_dependency_on_a_file_with_schema_errors_is_still_known(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"id": "a", "title": 3, "tasks": [
        {"id": "t", "tool": "shell", "command": "true"}]}))
    (tmp_path / "b.json").write_text(json.dumps({"id": "b", "depends_on": ["a", "zz"], "tasks": [
        {"id": "t", "tool": "shell", "command": "true", "depends_on": ["a/t", "a/u"]}]}))

    with pytest.raises(PlanError) as caught:
        load_plan(tmp_path)

    found = [(Path(i.file).name, i.json_path) for i in caught.value.issues]
    assert found == [("a.json", "$.title"), ("b.json", "$.depends_on[1]"), ("b.json", "$.tasks[0].depends_on[1]")]


def test_validate_json_prints_a_document_for_an_invalid_plan(tmp_path, write_plan, orchestrate):
    write_plan(BROKEN)

    result = orchestrate("validate", "--json", "plan.json")

    assert result.code == 2, result.out + result.err
    document = json.loads(result.out)
    assert document["valid"] is False
    assert [(p["file"], p["path"], p["message"]) for p in document["problems"]] == [
        ("plan.json", path, message) for path, message in BROKEN_PROBLEMS
    ]


def test_validate_json_of_a_valid_plan_says_valid(tmp_path, write_plan, orchestrate):
    write_plan(chain("w", 3))

    result = orchestrate("validate", "--json", "plan.json")

    assert result.code == 0, result.out + result.err
    document = json.loads(result.out)
    assert document["valid"] is True
    assert (document["workstreams"], document["tasks"], document["tools"]) == (1, 3, ["shell"])
    assert len(document["hash"]) == 64


def test_20k_tasks_with_two_dependencies_each_validate(tmp_path, write_plan, orchestrate):
    # Membership tests on lists made this take ~7-20 s; the pytest timeout is the bound.
    write_plan(chain("big", 20_000))

    result = orchestrate("validate", "plan.json")

    assert result.code == 0, result.out + result.err
    assert "1 workstreams, 20000 tasks" in result.out


def test_a_workstream_dependency_between_big_workstreams_is_not_expanded_pair_by_pair(tmp_path, write_plan, orchestrate):
    # 20k x 20k implied task links (400 M) if each pair were an edge.
    write_plan({"workstreams": [chain("a", 20_000, deps=0), {**chain("b", 20_000, deps=0), "depends_on": ["a"]}]})

    result = orchestrate("validate", "plan.json")

    assert result.code == 0, result.out + result.err
    assert "2 workstreams, 40000 tasks" in result.out


def test_a_cycle_through_a_big_workstream_dependency_is_reported_with_its_reason(tmp_path, write_plan, orchestrate):
    a = chain("a", 5_000, deps=1)
    b = {**chain("b", 5_000, deps=1), "depends_on": ["a"]}
    a["tasks"][0]["depends_on"] = ["b/t4999"]
    write_plan({"workstreams": [a, b]})

    result = orchestrate("validate", "plan.json")

    assert result.code == 2, result.out + result.err
    # Every task of b waits for every task of a, so the shortest way back is one step.
    assert result.err.splitlines()[1:] == [
        "  plan.json: $.workstreams[0].tasks[0].depends_on[0]: cycle: a/t0 -> b/t4999 -> a/t0 "
        + "(each depends on the next; b/t4999 -> a/t0 because workstream 'b' depends on 'a')"
    ]
