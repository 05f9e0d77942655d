"""Fan-out: a ``matrix`` task becomes one task per combination, at plan load (pure), with its
values in the command, args, env and a stable id; dependants wait for every expansion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planning.checks import WorkstreamSource
from planning.errors import PlanError
from planning.loader import load_plan
from planning.matrix import MAX_EXPANSIONS, expand_source, expansion_id


def write(tmp_path: Path, tasks: list[dict]) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"workstreams": [{"id": "ci", "tasks": tasks}]}))
    return path


def problems(tmp_path: Path, tasks: list[dict]) -> list[tuple[str, str]]:
    with pytest.raises(PlanError) as caught:
        load_plan(write(tmp_path, tasks))
    return [(issue.json_path, issue.message) for issue in caught.value.issues]


TESTS = {"id": "tests", "tool": "shell", "matrix": {"shard": [1, 2, 3, 4]},
         "command": "pytest --shard ${matrix.shard}/4", "env": {"WHICH": "shard-${matrix.shard}"}}


def test_one_task_per_value_with_the_value_in_command_env_and_id(tmp_path):
    plan = load_plan(write(tmp_path, [TESTS]))
    assert [t.key for t in plan.tasks] == [f"ci/tests[shard={n}]" for n in (1, 2, 3, 4)]
    second = plan.task("ci/tests[shard=2]")
    assert second.command == "pytest --shard 2/4"
    assert dict(second.env) == {"WHICH": "shard-2", "ORCHESTRATE_MATRIX_SHARD": "2"}


def test_several_keys_give_the_cartesian_product_in_the_order_written(tmp_path):
    task = {"id": "t", "tool": "shell", "command": "run ${matrix.py} ${matrix.db}",
            "matrix": {"py": ["3.11", "3.12"], "db": ["sqlite", "pg"]}}
    plan = load_plan(write(tmp_path, [task]))
    assert [t.id for t in plan.tasks] == ["t[py=3.11,db=sqlite]", "t[py=3.11,db=pg]", "t[py=3.12,db=sqlite]",
                                          "t[py=3.12,db=pg]"]
    assert plan.tasks[1].command == "run 3.11 pg"


def test_python_arguments_that_are_one_placeholder_keep_the_values_type(tmp_path):
    task = {"id": "t", "tool": "python", "callable": "m:f", "matrix": {"n": [1, 2.5, True]},
            "args": ["${matrix.n}", "n=${matrix.n}"], "kwargs": {"n": "${matrix.n}"}}
    plan = load_plan(write(tmp_path, [task]))
    assert [t.args for t in plan.tasks] == [(1, "n=1"), (2.5, "n=2.5"), (True, "n=true")]
    assert [dict(t.kwargs)["n"] for t in plan.tasks] == [1, 2.5, True]
    assert [t.id for t in plan.tasks] == ["t[n=1]", "t[n=2.5]", "t[n=true]"]


def test_dependants_of_a_matrix_task_wait_for_every_expansion_and_one_may_be_named(tmp_path):
    plan = load_plan(write(tmp_path, [
        TESTS,
        {"id": "build", "tool": "shell", "command": "true", "depends_on": ["tests"]},
        {"id": "pick", "tool": "shell", "command": "true", "depends_on": ["ci/tests[shard=3]"]},
    ]))
    assert plan.task("ci/build").depends_on == tuple(f"ci/tests[shard={n}]" for n in (1, 2, 3, 4))
    assert plan.task("ci/pick").depends_on == ("ci/tests[shard=3]",)


def test_expansions_inherit_the_matrix_tasks_own_dependencies_and_settings(tmp_path):
    plan = load_plan(write(tmp_path, [
        {"id": "setup", "tool": "shell", "command": "true"},
        TESTS | {"depends_on": ["setup"], "allow_failure": True, "timeout_s": 5},
    ]))
    for n in (1, 2, 3, 4):
        expansion = plan.task(f"ci/tests[shard={n}]")
        assert expansion.depends_on == ("ci/setup",) and expansion.allow_failure and expansion.timeout_s == 5.0


def test_the_ids_and_the_plan_hash_are_stable(tmp_path):
    first = load_plan(write(tmp_path, [TESTS]))
    again = load_plan(write(tmp_path, [TESTS]))
    assert first.hash == again.hash and [t.key for t in first.tasks] == [t.key for t in again.tasks]
    assert expansion_id("t", (("a", 1), ("b", "x"))) == "t[a=1,b=x]"


def test_bad_matrices_are_named_at_their_json_path(tmp_path):
    found = problems(tmp_path, [
        {"id": "a", "tool": "shell", "command": "true", "matrix": {"shard": []}},
        {"id": "b", "tool": "shell", "command": "true", "matrix": {"shard": [[1], {"k": 2}]}},
        {"id": "c", "tool": "shell", "command": "echo ${matrix.shrad}", "matrix": {"shard": [1]}},
        {"id": "d", "tool": "shell", "command": "echo ${matrix.shard}"},
        {"id": "e", "tool": "shell", "command": "true", "matrix": {}},
        {"id": "f", "tool": "shell", "command": "true", "matrix": {"k": ["a b"]}},
        {"id": "g", "tool": "shell", "command": "true", "env": {"X": "${matrix.k}"}, "matrix": {"j": [1]}},
    ])
    paths = [path for path, _ in found]
    assert "$.workstreams[0].tasks[0].matrix.shard" in paths
    assert "$.workstreams[0].tasks[1].matrix.shard[0]" in paths and "$.workstreams[0].tasks[1].matrix.shard[1]" in paths
    assert ("$.workstreams[0].tasks[2].command",
            "placeholder ${matrix.shrad} names no key of the task's matrix (its keys: shard)") in found
    assert ("$.workstreams[0].tasks[3].command", "placeholder ${matrix.shard} in a task without a 'matrix'") in found
    assert "$.workstreams[0].tasks[4].matrix" in paths
    assert "$.workstreams[0].tasks[5].matrix.k[0]" in paths
    assert "$.workstreams[0].tasks[6].env.X" in paths


def test_a_dependency_on_an_expansion_that_does_not_exist_is_named(tmp_path):
    found = problems(tmp_path, [TESTS, {"id": "x", "tool": "shell", "command": "true",
                                        "depends_on": ["tests[shard=9]"]}])
    assert found[0][0] == "$.workstreams[0].tasks[1].depends_on[0]"
    assert found[0][1].startswith("unknown task 'tests[shard=9]': workstream 'ci' has no task 'tests[shard=9]'")


def test_an_expansion_depending_on_its_own_matrix_task_depends_on_itself(tmp_path):
    found = problems(tmp_path, [TESTS | {"depends_on": ["tests"]}])
    assert found == [("$.workstreams[0].tasks[0].depends_on[0]", "task 'ci/tests[shard=1]' depends on itself")] + [
        ("$.workstreams[0].tasks[0].depends_on[0]", f"task 'ci/tests[shard={n}]' depends on itself") for n in (2, 3, 4)]


def test_a_cycle_through_a_matrix_task_points_at_the_dependency_as_written(tmp_path):
    found = problems(tmp_path, [
        TESTS | {"depends_on": ["build"]},
        {"id": "build", "tool": "shell", "command": "true", "depends_on": ["tests"]},
    ])
    assert len(found) == 1 and found[0][1].startswith("cycle: ci/tests[shard=1] -> ci/build -> ci/tests[shard=1]")
    assert found[0][0] == "$.workstreams[0].tasks[0].depends_on[0]"


def test_too_many_combinations_are_refused(tmp_path):
    huge = {"id": "t", "tool": "shell", "command": "true",
            "matrix": {"a": list(range(40)), "b": list(range(40))}}
    found = problems(tmp_path, [huge])
    assert found == [("$.workstreams[0].tasks[0].matrix",
                      f"1600 combinations; at most {MAX_EXPANSIONS} are allowed per task")]


def test_expansion_keeps_each_tasks_index_as_written():
    source = WorkstreamSource("p.json", "$", {"id": "w", "tasks": [
        {"id": "a", "tool": "shell", "command": "true", "matrix": {"k": [1, 2]}},
        {"id": "b", "tool": "shell", "command": "true"}]})
    expanded, issues = expand_source(source)
    assert issues == []
    assert [(index, task["id"]) for index, task in expanded.tasks()] == [(0, "a[k=1]"), (0, "a[k=2]"), (1, "b")]
    assert expanded.groups == {"a": ("a[k=1]", "a[k=2]")}


def test_validate_reports_a_bad_matrix_with_exit_2_and_no_traceback(orchestrate, tmp_path):
    write(tmp_path, [{"id": "t", "tool": "shell", "command": "echo ${matrix.nope}", "matrix": {"k": [1]}}])
    result = orchestrate("validate", "plan.json")
    assert result.code == 2 and "Traceback" not in result.err
    assert ("plan.json: $.workstreams[0].tasks[0].command: placeholder ${matrix.nope} names no key of the "
            "task's matrix (its keys: k)") in result.err


def test_an_input_names_one_expansion_not_the_matrix_task_which_has_a_result_per_expansion(tmp_path):
    found = problems(tmp_path, [TESTS, {"id": "sum", "tool": "python", "callable": "m:f", "depends_on": ["tests"],
                                        "inputs": {"all": "tests", "two": "tests[shard=2]"}}])
    assert found == [("$.workstreams[0].tasks[1].inputs.all",
                      "input 'all' of task 'ci/sum' names the matrix task 'ci/tests', which has one result per "
                      "expansion; name one of them, e.g. 'ci/tests[shard=1]'")]
