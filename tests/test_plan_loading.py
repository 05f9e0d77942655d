"""Loading workstream files into a Plan, and the errors a user sees when they are wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planning.errors import PlanError, PlanIssue
from planning.loader import load_plan

API = {
    "id": "ws-api",
    "title": "Add the API",
    "depends_on": ["ws-model"],
    "tasks": [
        {
            "id": "write",
            "tool": "shell",
            "command": "echo hi > out.txt",
            "depends_on": [],
            "timeout_s": 60,
            "cwd": ".",
            "env": {"K": "V"},
            "priority": 0,
            "tags": ["io"],
            "acceptance": [{"command": "test -s out.txt"}],
        },
        {
            "id": "check",
            "tool": "python",
            "callable": "pkg.mod:function",
            "args": [1],
            "kwargs": {},
            "depends_on": ["write"],
        },
    ],
}
MODEL = {"id": "ws-model", "tasks": [{"id": "schema", "tool": "shell", "command": "true"}]}


def shell(task_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "tool": "shell", "command": "true", **fields}


def write(directory: Path, name: str, content: Any) -> Path:
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def issues_of(path: Path | str) -> tuple[PlanIssue, ...]:
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    return caught.value.issues


def only_issue(path: Path | str) -> PlanIssue:
    issues = issues_of(path)
    assert len(issues) == 1, issues
    return issues[0]


# --- what loads ----------------------------------------------------------------------------


def test_example_plan_loads_with_dependencies_made_run_wide(tmp_path: Path) -> None:
    write(tmp_path, "ws-api.json", API)
    write(tmp_path, "ws-model.json", MODEL)

    plan = load_plan(tmp_path)

    assert [ws.id for ws in plan.workstreams] == ["ws-api", "ws-model"]
    api = plan.workstreams[0]
    assert api.title == "Add the API"
    assert api.depends_on == ("ws-model",)
    assert api.source_file == str(tmp_path / "ws-api.json")
    write_task, check = api.tasks
    assert write_task.key == "ws-api/write"
    assert write_task.timeout_s == 60.0
    assert write_task.env == (("K", "V"),)
    assert write_task.acceptance[0].command == "test -s out.txt"
    assert check.depends_on == ("ws-api/write",)
    assert check.callable == "pkg.mod:function"
    assert check.args == (1,)
    assert plan.hash == plan.content_hash() and len(plan.hash) == 64


def test_cwd_is_made_absolute_against_the_plan_directory_and_defaults_to_it(tmp_path: Path) -> None:
    doc = {
        "id": "ws",
        "tasks": [shell("here"), shell("sub", cwd="src/pkg"), shell("abs", cwd="/opt")],
    }
    write(tmp_path, "ws.json", doc)

    plan = load_plan(tmp_path / "ws.json")

    assert plan.base_dir == str(tmp_path)
    assert [task.cwd for task in plan.tasks] == [
        str(tmp_path),
        str(tmp_path / "src" / "pkg"),
        "/opt",
    ]


def test_source_is_the_path_as_given_and_base_dir_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "ws.json", MODEL)
    monkeypatch.chdir(tmp_path)

    plan = load_plan("ws.json")

    assert plan.source == "ws.json"
    assert plan.base_dir == str(tmp_path)


def test_directory_plan_reads_plan_files_in_name_order_and_ignores_others(tmp_path: Path) -> None:
    write(tmp_path, "b.yml", "id: ws-b\ntasks: [{id: t, tool: shell, command: 'true'}]\n")
    write(tmp_path, "a.json", {"id": "ws-a", "tasks": [shell("t")]})
    write(tmp_path, "c.yaml", "id: ws-c\ntasks: [{id: t, tool: shell, command: 'true'}]\n")
    write(tmp_path, "notes.txt", "not a plan")
    write(tmp_path, ".a.json.swp", "{")
    (tmp_path / "nested").mkdir()
    write(tmp_path / "nested", "x.json", "{")

    plan = load_plan(tmp_path)

    assert [ws.id for ws in plan.workstreams] == ["ws-a", "ws-b", "ws-c"]


def test_yaml_plan_loads_like_the_same_json(tmp_path: Path) -> None:
    yaml_text = """
id: ws-api
title: Add the API
depends_on: [ws-model]
tasks:
  - id: write
    tool: shell
    command: echo hi > out.txt
    depends_on: []
    timeout_s: 60
    cwd: .
    env: {K: V}
    priority: 0
    tags: [io]
    acceptance:
      - command: test -s out.txt
  - id: check
    tool: python
    callable: pkg.mod:function
    args: [1]
    kwargs: {}
    depends_on: [write]
"""
    (tmp_path / "yaml").mkdir()
    (tmp_path / "json").mkdir()
    write(tmp_path / "yaml", "ws-api.yaml", yaml_text)
    write(tmp_path / "yaml", "ws-model.json", MODEL)
    write(tmp_path / "json", "ws-api.json", API)
    write(tmp_path / "json", "ws-model.json", MODEL)

    from_yaml, from_json = load_plan(tmp_path / "yaml"), load_plan(tmp_path / "json")

    # cwd differs (it is absolute), so compare with the directories made equal.
    assert from_yaml.tasks[0].cwd == str(tmp_path / "yaml")
    assert [t.to_json() | {"cwd": ""} for t in from_yaml.tasks] == [
        t.to_json() | {"cwd": ""} for t in from_json.tasks
    ]


def test_bundle_defaults_apply_where_a_task_leaves_them_out(tmp_path: Path) -> None:
    bundle = {
        "defaults": {"max_attempts": 3, "timeout_s": 30},
        "workstreams": [
            {"id": "ws", "tasks": [shell("plain"), shell("own", max_attempts=5, timeout_s=2.5)]}
        ],
    }
    write(tmp_path, "plan.json", bundle)

    plain, own = load_plan(tmp_path / "plan.json").tasks

    assert (plain.max_attempts, plain.timeout_s) == (3, 30.0)
    assert (own.max_attempts, own.timeout_s) == (5, 2.5)


def test_without_defaults_a_task_gets_one_attempt_and_no_timeout(tmp_path: Path) -> None:
    write(tmp_path, "ws.json", MODEL)

    (task,) = load_plan(tmp_path).tasks

    assert (task.max_attempts, task.timeout_s) == (1, None)


def test_plan_hash_does_not_depend_on_how_workstreams_are_split_into_files(tmp_path: Path) -> None:
    (tmp_path / "split").mkdir()
    (tmp_path / "bundle").mkdir()
    write(tmp_path / "split", "1.json", API)
    write(tmp_path / "split", "2.json", MODEL)
    write(tmp_path / "bundle", "all.json", {"workstreams": [API, MODEL]})
    api_with_float = json.loads(json.dumps(API).replace('"timeout_s": 60', '"timeout_s": 60.0'))
    write(tmp_path / "bundle", "float.json", {"workstreams": [api_with_float, MODEL]})

    split = load_plan(tmp_path / "split")
    bundle = load_plan(tmp_path / "bundle" / "all.json")
    written_as_float = load_plan(tmp_path / "bundle" / "float.json")

    assert split.hash != bundle.hash  # different base directories, so different absolute cwds
    assert bundle.hash == written_as_float.hash
    assert load_plan(tmp_path / "split").hash == split.hash


def test_task_dependency_written_bare_or_qualified_is_kept_once(tmp_path: Path) -> None:
    write(
        tmp_path,
        "ws.json",
        {"id": "ws", "tasks": [shell("a"), shell("b", depends_on=["a", "ws/a"])]},
    )

    assert load_plan(tmp_path).tasks[1].depends_on == ("ws/a",)


# --- files that cannot be read -------------------------------------------------------------


def test_missing_path_is_a_plan_error(tmp_path: Path) -> None:
    issue = only_issue(tmp_path / "nope")

    assert issue == PlanIssue(str(tmp_path / "nope"), "$", "no such file or directory")


def test_empty_directory_is_a_plan_error(tmp_path: Path) -> None:
    write(tmp_path, "readme.md", "# nothing here")

    issue = only_issue(tmp_path)

    assert issue.file == str(tmp_path)
    assert "no plan files" in issue.message


def test_file_with_another_suffix_is_refused(tmp_path: Path) -> None:
    issue = only_issue(write(tmp_path, "plan.txt", json.dumps(MODEL)))

    assert ".json" in issue.message and ".yaml" in issue.message


def test_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "ws.json", '{"id": "ws",\n  "tasks": [,]}')

    issue = only_issue(path)

    assert (issue.file, issue.json_path) == (str(path), "$")
    assert "malformed JSON at line 2, column 13" in issue.message


def test_malformed_yaml_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "ws.yaml", "id: ws\ntasks: [a: b: c]\n")

    issue = only_issue(path)

    assert (issue.file, issue.json_path) == (str(path), "$")
    assert "malformed YAML at line 2, column 13" in issue.message


def test_empty_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "ws.yaml", "\n  \n")

    assert only_issue(path) == PlanIssue(str(path), "$", "file is empty")


def test_yaml_values_that_json_cannot_hold_are_refused_with_their_path(tmp_path: Path) -> None:
    text = (
        "id: ws\ntitle: 2024-01-01\ntasks:\n"
        " - {id: t, tool: shell, command: x, timeout_s: .inf, kwargs: {1: 2}}\n"
    )
    path = write(tmp_path, "ws.yaml", text)

    issues = issues_of(path)

    assert [(i.json_path, i.message) for i in issues] == [
        ("$.title", "a date is not a JSON value; quote it to make it a string"),
        ("$.tasks[0].timeout_s", "inf is not allowed; use a finite number"),
        ("$.tasks[0].kwargs", "key 1 is not a string; quote it"),
    ]


# --- schema violations ---------------------------------------------------------------------


def test_schema_violation_names_path_and_what_was_expected(tmp_path: Path) -> None:
    path = write(
        tmp_path, "ws.json", {"id": "ws", "tasks": [shell("a"), shell("b", timeout_s="abc")]}
    )

    issue = only_issue(path)

    assert issue == PlanIssue(
        str(path), "$.tasks[1].timeout_s", "'timeout_s' must be a number > 0, got 'abc'"
    )


@pytest.mark.parametrize(
    ("fields", "json_path", "fragment"),
    [
        ({"timeout_s": 0}, "$.tasks[0].timeout_s", "must be a number > 0, got 0"),
        (
            {"max_attempts": 101},
            "$.tasks[0].max_attempts",
            "must be an integer from 1 to 100, got 101",
        ),
        ({"priority": 1.5}, "$.tasks[0].priority", "must be an integer, got 1.5"),
        (
            {"callable": "no-colon"},
            "$.tasks[0].callable",
            "must be a 'package.module:function' reference",
        ),
        ({"env": {"K": 1}}, "$.tasks[0].env.K", "must be a string, got 1"),
        (
            {"env": {"A=B": "x"}},
            "$.tasks[0].env",
            "key 'A=B' of 'env' must be a non-empty variable name",
        ),
        ({"depends_on": ["u", "u"]}, "$.tasks[0].depends_on", "lists 'u' more than once"),
        (
            {"acceptance": [{"name": "lint"}]},
            "$.tasks[0].acceptance[0]",
            "missing required property 'command'",
        ),
        ({"id": "bad id"}, "$.tasks[0].id", "must be an id of letters, digits"),
        ({"tool": "Shell"}, "$.tasks[0].tool", "must be a lower-case tool name"),
    ],
)
def test_task_field_errors_are_human(
    tmp_path: Path, fields: dict[str, Any], json_path: str, fragment: str
) -> None:
    document = {"id": "ws", "tasks": [shell("t") | fields, shell("u")]}
    issue = only_issue(write(tmp_path, "ws.json", document))

    assert issue.json_path == json_path
    assert fragment in issue.message


def test_unknown_property_is_a_typo_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "ws.json", {"id": "ws", "tasks": [shell("t", timout_s=5)]})

    issue = only_issue(path)

    assert issue.json_path == "$.tasks[0].timout_s"
    assert issue.message == "unknown property 'timout_s' (did you mean 'timeout_s'?)"


@pytest.mark.parametrize(
    ("tool", "needed"), [("shell", "command"), ("python", "callable"), ("human", "prompt")]
)
def test_each_builtin_tool_requires_what_it_runs(tmp_path: Path, tool: str, needed: str) -> None:
    path = write(tmp_path, "ws.json", {"id": "ws", "tasks": [{"id": "t", "tool": tool}]})

    assert only_issue(path) == PlanIssue(
        str(path), "$.tasks[0]", f"tool {tool!r} requires {needed!r}"
    )


def test_other_tools_need_no_particular_field(tmp_path: Path) -> None:
    write(
        tmp_path,
        "ws.json",
        {"id": "ws", "tasks": [{"id": "t", "tool": "aider", "files": ["src/*.py"]}]},
    )

    assert load_plan(tmp_path).tasks[0].files == ("src/*.py",)


def test_workstream_needs_id_and_at_least_one_task(tmp_path: Path) -> None:
    path = write(tmp_path, "ws.json", {"title": "x", "tasks": []})

    assert [(i.json_path, i.message) for i in issues_of(path)] == [
        ("$", "missing required property 'id'"),
        ("$.tasks", "'tasks' must be a non-empty list of task objects, got an empty list"),
    ]


def test_plan_file_must_hold_an_object(tmp_path: Path) -> None:
    issue = only_issue(write(tmp_path, "ws.json", "[1, 2]"))

    assert issue.json_path == "$"
    assert issue.message.startswith("a plan file must be a workstream object")
    assert issue.message.endswith("got a list")


def test_bundle_entries_are_located_inside_the_bundle(tmp_path: Path) -> None:
    bundle = {
        "defaults": {"max_attempts": 0},
        "workstreams": [MODEL, {"id": "ws", "tasks": [{"id": "t"}]}],
    }

    issues = issues_of(write(tmp_path, "plan.json", bundle))

    assert [(i.json_path, i.message) for i in issues] == [
        ("$.defaults.max_attempts", "'max_attempts' must be an integer from 1 to 100, got 0"),
        ("$.workstreams[1].tasks[0]", "missing required property 'tool'"),
    ]


# --- graph checks --------------------------------------------------------------------------


def test_duplicate_workstream_id_names_both_places(tmp_path: Path) -> None:
    write(tmp_path, "a.json", MODEL)
    second = write(tmp_path, "b.json", {"workstreams": [API, MODEL]})

    issue = only_issue(tmp_path)

    assert (issue.file, issue.json_path) == (str(second), "$.workstreams[1].id")
    assert (
        issue.message
        == f"duplicate workstream id 'ws-model', also defined in {tmp_path / 'a.json'} at $"
    )


def test_duplicate_task_id_within_a_workstream(tmp_path: Path) -> None:
    path = write(tmp_path, "ws.json", {"id": "ws", "tasks": [shell("a"), shell("b"), shell("a")]})

    issue = only_issue(path)

    assert issue.json_path == "$.tasks[2].id"
    assert issue.message == "duplicate task id 'a' in workstream 'ws', first at $.tasks[0]"


def test_same_task_id_in_two_workstreams_is_fine(tmp_path: Path) -> None:
    write(
        tmp_path,
        "plan.json",
        {"workstreams": [{"id": "a", "tasks": [shell("t")]}, {"id": "b", "tasks": [shell("t")]}]},
    )

    assert [t.key for t in load_plan(tmp_path).tasks] == ["a/t", "b/t"]


def test_unknown_workstream_dependency_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "ws-api.json", API)

    issue = only_issue(path)

    assert issue == PlanIssue(
        str(path), "$.depends_on[0]", "unknown workstream 'ws-model' (known: ws-api)"
    )


def test_unknown_task_dependency_names_the_exact_entry(tmp_path: Path) -> None:
    write(tmp_path, "ws-model.json", MODEL)
    doc = {
        "id": "ws",
        "tasks": [
            shell("a", depends_on=["ws-model/schema", "ws-model/nope"]),
            shell("b", depends_on=["zz"]),
        ],
    }
    path = write(tmp_path, "ws.json", doc)

    issues = issues_of(tmp_path)

    assert [(i.file, i.json_path) for i in issues] == [
        (str(path), "$.tasks[0].depends_on[1]"),
        (str(path), "$.tasks[1].depends_on[0]"),
    ]
    assert issues[0].message == (
        "unknown task 'ws-model/nope': workstream 'ws-model' has no task 'nope' (its tasks: schema)"
    )
    assert (
        issues[1].message == "unknown task 'zz': workstream 'ws' has no task 'zz' (its tasks: a, b)"
    )


def test_task_dependency_on_an_unknown_workstream(tmp_path: Path) -> None:
    path = write(tmp_path, "ws.json", {"id": "ws", "tasks": [shell("a", depends_on=["other/t"])]})

    issue = only_issue(path)

    assert issue.json_path == "$.tasks[0].depends_on[0]"
    assert issue.message.startswith("unknown workstream 'other' in task dependency 'other/t'")


def test_task_depending_on_itself(tmp_path: Path) -> None:
    path = write(tmp_path, "ws.json", {"id": "ws", "tasks": [shell("a", depends_on=["ws/a"])]})

    assert only_issue(path) == PlanIssue(
        str(path), "$.tasks[0].depends_on[0]", "task 'ws/a' depends on itself"
    )


def test_workstream_depending_on_itself(tmp_path: Path) -> None:
    doc = {"id": "ws", "depends_on": ["ws"], "tasks": [shell("a"), shell("b")]}
    path = write(tmp_path, "ws.json", doc)

    assert only_issue(path) == PlanIssue(
        str(path), "$.depends_on[0]", "workstream 'ws' depends on itself"
    )


def test_cycle_error_lists_members_in_order(tmp_path: Path) -> None:
    doc = {
        "id": "ws-a",
        "tasks": [
            shell("t1", depends_on=["t2"]),
            shell("t2", depends_on=["t3"]),
            shell("t3", depends_on=["t1"]),
        ],
    }
    path = write(tmp_path, "ws-a.json", doc)

    issue = only_issue(path)

    assert (issue.file, issue.json_path) == (str(path), "$.tasks[0].depends_on[0]")
    assert issue.message.startswith("cycle: ws-a/t1 -> ws-a/t2 -> ws-a/t3 -> ws-a/t1 ")


def test_cycle_across_workstreams_through_task_dependencies(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {"id": "a", "tasks": [shell("t", depends_on=["b/t"])]})
    write(tmp_path, "b.json", {"id": "b", "tasks": [shell("t", depends_on=["a/t"])]})

    issue = only_issue(tmp_path)

    assert (issue.file, issue.json_path) == (str(tmp_path / "a.json"), "$.tasks[0].depends_on[0]")
    assert issue.message.startswith("cycle: a/t -> b/t -> a/t")


def test_task_depending_on_a_workstream_that_waits_for_its_own_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {"id": "a", "tasks": [shell("x"), shell("y", depends_on=["b/t"])]})
    write(tmp_path, "b.json", {"id": "b", "depends_on": ["c"], "tasks": [shell("t")]})
    write(tmp_path, "c.json", {"id": "c", "depends_on": ["a"], "tasks": [shell("t")]})

    issue = only_issue(tmp_path)

    assert (issue.file, issue.json_path) == (str(tmp_path / "a.json"), "$.tasks[1].depends_on[0]")
    assert issue.message == (
        "cycle: a/y -> b/t -> c/t -> a/y (each depends on the next; "
        "b/t -> c/t because workstream 'b' depends on 'c'; "
        "c/t -> a/y because workstream 'c' depends on 'a')"
    )


def test_workstream_cycle_names_members_and_the_dependency_entry(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {"id": "a", "depends_on": ["b"], "tasks": [shell("t")]})
    write(tmp_path, "b.json", {"id": "b", "depends_on": ["c"], "tasks": [shell("t")]})
    write(tmp_path, "c.json", {"id": "c", "depends_on": ["a"], "tasks": [shell("t")]})

    issue = only_issue(tmp_path)

    assert (issue.file, issue.json_path) == (str(tmp_path / "a.json"), "$.depends_on[0]")
    assert issue.message.startswith("cycle: a -> b -> c -> a ")


def test_task_cycle_is_still_found_next_to_a_workstream_cycle(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.json",
        {"id": "a", "depends_on": ["b"], "tasks": [shell("t", depends_on=["c/t"])]},
    )
    write(tmp_path, "b.json", {"id": "b", "depends_on": ["a"], "tasks": [shell("t")]})
    write(tmp_path, "c.json", {"id": "c", "tasks": [shell("t", depends_on=["a/t"])]})

    messages = [issue.message for issue in issues_of(tmp_path)]

    assert [m.split(" (")[0] for m in messages] == [
        "cycle: a -> b -> a",
        "cycle: a/t -> c/t -> a/t",
    ]


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    write(tmp_path, "a.json", "{not json")
    write(tmp_path, "b.json", {"id": "b", "tasks": [shell("t", timeout_s=-1, priority="high")]})
    write(tmp_path, "c.yaml", "id: c\ntasks:\n  - {id: t, tool: human}\n")

    with pytest.raises(PlanError) as caught:
        load_plan(tmp_path)

    located = [(Path(i.file).name, i.json_path) for i in caught.value.issues]
    assert located == [
        ("a.json", "$"),
        ("b.json", "$.tasks[0].priority"),
        ("b.json", "$.tasks[0].timeout_s"),
        ("c.yaml", "$.tasks[0]"),
    ]
    assert str(caught.value).splitlines() == [str(issue) for issue in caught.value.issues]


def test_a_schema_error_elsewhere_in_a_workstream_does_not_make_it_unknown(tmp_path: Path) -> None:
    # ws-api depends on ws-model, whose file is broken in a field that has no bearing on that.
    write(tmp_path, "ws-api.json", API)
    write(tmp_path, "ws-model.json", MODEL | {"title": 3})

    issue = only_issue(tmp_path)

    assert issue.json_path == "$.title"


def test_plan_issue_reads_as_file_path_and_message() -> None:
    issue = PlanIssue(
        "plans/a.json", "$.tasks[1].timeout_s", "'timeout_s' must be a number > 0, got 'abc'"
    )

    assert (
        str(issue)
        == "plans/a.json: $.tasks[1].timeout_s: 'timeout_s' must be a number > 0, got 'abc'"
    )


# --- robustness ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
TASK_FIELDS = [
    "id",
    "tool",
    "command",
    "callable",
    "depends_on",
    "timeout_s",
    "cwd",
    "env",
    "max_attempts",
    "args",
]


def with_wild_value(
    strategy: st.SearchStrategy[dict[str, Any]], fields: list[str]
) -> st.SearchStrategy[dict[str, Any]]:
    """About half the objects get one field replaced by an arbitrary JSON value."""
    wild = st.none() | st.tuples(st.sampled_from(fields), json_values)
    return st.tuples(strategy, wild).map(
        lambda pair: pair[0] if pair[1] is None else pair[0] | dict([pair[1]])
    )


# Plans that are often valid, often subtly wrong (unknown ids, cycles, bad values), so that
# both outcomes are exercised.
task_like = with_wild_value(
    st.fixed_dictionaries(
        {"id": st.sampled_from(["t", "u"]), "tool": st.just("shell"), "command": st.just("true")},
        optional={
            "depends_on": st.lists(
                st.sampled_from(["t", "u", "w/t", "v/u", "nope/t"]), max_size=2, unique=True
            ),
            "timeout_s": st.floats(min_value=0.5, max_value=1e6),
            "cwd": st.sampled_from(["sub", "/tmp", ".."]),
            "env": st.dictionaries(st.sampled_from(["A", "B"]), st.text(max_size=3)),
        },
    ),
    TASK_FIELDS,
)
workstream_like = with_wild_value(
    st.fixed_dictionaries(
        {"id": st.sampled_from(["w", "v"]), "tasks": st.lists(task_like, min_size=1, max_size=2)},
        optional={
            "depends_on": st.lists(st.sampled_from(["w", "v", "x"]), max_size=1, unique=True)
        },
    ),
    ["id", "tasks", "depends_on", "metadata", "title"],
)
documents = (
    json_values
    | workstream_like
    | st.fixed_dictionaries({"workstreams": st.lists(workstream_like, max_size=2)})
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=documents)
def test_any_json_value_loads_or_raises_plan_error(tmp_path: Path, document: Any) -> None:
    path = write(tmp_path, "plan.json", document)
    try:
        plan = load_plan(path)
    except PlanError as error:
        assert error.issues and all(isinstance(issue, PlanIssue) for issue in error.issues)
    else:
        assert plan.hash == plan.content_hash()


def test_the_streamed_json_text_of_a_plan_is_its_canonical_json_and_hash(tmp_path):
    """Big plans are serialised and hashed one task at a time; the text and the hash must be
    exactly those of the whole plan's canonical JSON (stored run ids and request hashes rely
    on it)."""
    from domain.plan import canonical_json, sha256_of

    source = tmp_path / "plan.json"
    source.write_text(json.dumps({"workstreams": [
        {"id": "uni", "title": "naïve \"quotes\"", "tasks": [
            {"id": "a", "tool": "shell", "command": "echo ∑ > out", "env": {"Z": "1", "A": "2"}},
            {"id": "b", "tool": "python", "callable": "m:f", "args": [1, "x"], "depends_on": ["a"]}]},
        {"id": "w2", "depends_on": ["uni"], "tasks": [{"id": "c", "tool": "shell", "command": "true"}]}]}))
    plan = load_plan(str(source))
    assert plan.json_text() == canonical_json(plan.to_json())
    assert plan.json_text(content_only=True) == canonical_json(plan.content_json())
    assert plan.content_hash() == sha256_of(plan.content_json())
