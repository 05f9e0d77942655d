"""Missions: a MissionSpec planned into a bounded, deterministic workflow, and what comes after.

Specifications of ``planning.missions`` (model, limits, envelope, plan documents, mission
files, receipts), ``planning.mission_templates`` and ``planning.mission_report``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest

from planning import mission_templates
from planning.errors import PlanError
from planning.loader import load_plan
from planning.mission_report import junit_counts, summarise_junit
from planning.mission_templates import REPORT_CALLABLE, REPORT_FILE, TEMPLATES
from planning.missions import (
    MAX_HUMAN_STEPS,
    MAX_STEPS,
    AntiFailurePlanningError,
    EnvelopeViolation,
    MissionParamError,
    MissionSpec,
    StepLimitExceeded,
    UnknownMissionType,
    WorkflowDefinition,
    WorkflowStep,
    build_workflow,
    envelope_problems,
    halted_state,
    load_mission,
    mission_hash,
    receipt,
    receipt_hash,
    receipt_lineage,
    supported_mission_types,
    validate_envelope,
    workflow_to_plan,
)
from planning.schemas import schema_issues

ROOT = Path(__file__).resolve().parents[1]

# The smallest valid params of every template; a new template must add itself here.
EXAMPLE_PARAMS = {
    "daily_loop": {},
    "run_tests": {"target": "project"},
}


def humans(workflow: WorkflowDefinition) -> list[str]:
    return [step.id for step in workflow.steps if step.kind == "human"]


def ids(workflow: WorkflowDefinition) -> list[str]:
    return [step.id for step in workflow.steps]


def runtime(step_id: str, **fields) -> WorkflowStep:
    return WorkflowStep(id=step_id, kind="runtime", command="true", **fields)


def human(step_id: str, **fields) -> WorkflowStep:
    return WorkflowStep(id=step_id, kind="human", prompt="ok?", **fields)


# ------------------------------------------------------------------------------------------
# The two templates
# ------------------------------------------------------------------------------------------


def test_daily_loop_defaults_give_a_valid_workflow():
    workflow = build_workflow(MissionSpec("daily_loop", {}))

    assert workflow.id == "wf-daily-loop"
    assert workflow.mission_type == "daily_loop"
    assert ids(workflow) == ["confirm-priorities", "check-1", "check-2", "summary"]
    assert {step.kind for step in workflow.steps} <= {"runtime", "human"}
    confirm = workflow.step("confirm-priorities")
    assert confirm.kind == "human" and "today's priorities" in confirm.prompt
    assert workflow.step("check-1").depends_on == ("confirm-priorities",)
    assert workflow.step("summary").depends_on == ("check-1", "check-2")
    assert all(step.cwd == "." for step in workflow.steps if step.kind == "runtime")
    assert workflow.meta("truncated") is False and workflow.meta("dropped_steps") == ()
    validate_envelope(workflow)


def test_daily_loop_params_shape_the_steps():
    workflow = build_workflow(
        MissionSpec(
            "daily_loop",
            {"focus": "ship the parser", "checks": 1, "project": "repo", "review": True},
        )
    )

    assert ids(workflow) == ["confirm-priorities", "check-1", "summary", "review"]
    assert humans(workflow) == ["confirm-priorities", "review"]
    assert "ship the parser" in workflow.step("confirm-priorities").prompt
    assert "ship the parser" in workflow.step("review").prompt
    assert workflow.step("review").depends_on == ("summary",)
    assert {step.cwd for step in workflow.steps if step.kind == "runtime"} == {"repo"}


def test_daily_loop_with_no_checks_summarises_after_the_confirmation():
    workflow = build_workflow(MissionSpec("daily_loop", {"checks": 0}))

    assert ids(workflow) == ["confirm-priorities", "summary"]
    assert workflow.step("summary").depends_on == ("confirm-priorities",)


def test_run_tests_discovers_executes_and_reports_in_the_target():
    workflow = build_workflow(MissionSpec("run_tests", {"target": "runtime"}))

    assert workflow.id == "wf-run-tests"
    assert ids(workflow) == ["discover", "execute", "report"]
    assert humans(workflow) == []
    discover, execute, report = workflow.steps
    assert discover.command == "python3 -m pytest --collect-only -q"
    assert execute.command == f"python3 -m pytest -q --junitxml={REPORT_FILE}"
    assert execute.depends_on == ("discover",)
    assert execute.acceptance == (f"test -s {REPORT_FILE}",)
    assert (report.callable, report.args, report.command) == (REPORT_CALLABLE, (REPORT_FILE,), None)
    assert report.depends_on == ("execute",)
    assert {step.cwd for step in workflow.steps} == {"runtime"}
    validate_envelope(workflow)


def test_run_tests_args_select_tests_but_never_add_shell_syntax():
    workflow = build_workflow(
        MissionSpec("run_tests", {"target": "p", "args": "-q -k 'a or b' ; echo pwned > x"})
    )

    discover, execute, _ = workflow.steps
    words = "-k 'a or b' ';' echo pwned '>' x"
    assert discover.command == f"python3 -m pytest --collect-only -q {words}"
    assert execute.command == f"python3 -m pytest -q {words} --junitxml=.orchestrate-report.xml"


def test_run_tests_refuses_missing_target_naming_the_param():
    for params in ({}, {"target": None}):
        with pytest.raises(MissionParamError) as caught:
            build_workflow(MissionSpec("run_tests", params))
        assert caught.value.param == "target"
        assert "'target'" in str(caught.value)
        assert isinstance(caught.value, AntiFailurePlanningError)


@pytest.mark.parametrize(
    ("mission_type", "params", "param"),
    [
        ("run_tests", {"target": "p", "runner": "nose"}, "runner"),
        ("run_tests", {"target": "p", "args": "-k 'unbalanced"}, "args"),
        ("run_tests", {"target": ""}, "target"),
        ("run_tests", {"target": "p", "timeout_s": 0}, "timeout_s"),
        ("daily_loop", {"checks": "3"}, "checks"),
        ("daily_loop", {"checks": -1}, "checks"),
        ("daily_loop", {"checks": 2.0}, "checks"),
        ("daily_loop", {"checks": 51}, "checks"),
        ("daily_loop", {"review": "yes"}, "review"),
        ("daily_loop", {"focus": 7}, "focus"),
        ("daily_loop", {"strict": "true"}, "strict"),
    ],
)
def test_bad_params_are_refused_naming_the_param(mission_type, params, param):
    with pytest.raises(MissionParamError) as caught:
        build_workflow(MissionSpec(mission_type, params))
    assert caught.value.param == param
    assert f"'{param}'" in str(caught.value)


def test_unknown_mission_type_is_refused_listing_the_supported_types():
    with pytest.raises(UnknownMissionType) as caught:
        build_workflow(MissionSpec("unknown_mission_type", {}))

    assert isinstance(caught.value, AntiFailurePlanningError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.supported == ("daily_loop", "run_tests") == supported_mission_types()
    assert str(caught.value) == (
        "unknown mission type 'unknown_mission_type'; supported types: daily_loop, run_tests"
    )


def test_every_template_has_an_example_and_stays_within_the_limits():
    assert set(EXAMPLE_PARAMS) == set(TEMPLATES)
    for mission_type, params in EXAMPLE_PARAMS.items():
        workflow = build_workflow(MissionSpec(mission_type, params))
        assert 0 < len(workflow.steps) <= MAX_STEPS
        assert len(humans(workflow)) <= MAX_HUMAN_STEPS
        assert envelope_problems(workflow) == []


# ------------------------------------------------------------------------------------------
# Limits: truncate by default, refuse in strict mode
# ------------------------------------------------------------------------------------------


def test_too_many_steps_are_truncated_in_declared_order():
    workflow = build_workflow(MissionSpec("daily_loop", {"checks": 10}))

    assert ids(workflow) == ["confirm-priorities", "check-1", "check-2", "check-3", "check-4"]
    assert workflow.meta("truncated") is True
    assert workflow.meta("requested_steps") == 12
    assert workflow.meta("dropped_steps") == (
        "check-5", "check-6", "check-7", "check-8", "check-9", "check-10", "summary",
    )
    # The four kept checks are four different checks.
    assert len({step.command for step in workflow.steps if step.kind == "runtime"}) == 4
    validate_envelope(workflow)


def test_too_many_human_steps_are_truncated_and_their_dependants_go_with_them():
    workflow = build_workflow(MissionSpec("daily_loop", {"checks": 0, "review": 3}))

    assert ids(workflow) == ["confirm-priorities", "summary", "review"]
    assert len(humans(workflow)) == MAX_HUMAN_STEPS
    assert workflow.meta("dropped_steps") == ("review-2", "review-3")
    assert workflow.meta("truncated") is True


def test_a_step_never_survives_the_approval_that_gated_it(monkeypatch):
    """Truncation keeps the workflow closed under dependencies (a new template, one entry)."""

    def gated(params):
        return [
            human("approve-1"),
            human("approve-2", depends_on=("approve-1",)),
            human("approve-3"),
            runtime("deploy", depends_on=("approve-3",)),
            runtime("notify", depends_on=("approve-2",)),
        ]

    extended = MappingProxyType({**TEMPLATES, "gated": gated})
    monkeypatch.setattr(mission_templates, "TEMPLATES", extended)
    workflow = build_workflow(MissionSpec("gated", {}))

    assert ids(workflow) == ["approve-1", "approve-2", "notify"]
    assert workflow.meta("dropped_steps") == ("approve-3", "deploy")
    with pytest.raises(StepLimitExceeded):
        build_workflow(MissionSpec("gated", {"strict": True}))


def test_a_template_declaring_steps_out_of_order_is_a_bug_not_a_truncation(monkeypatch):
    def backwards(params):
        return [runtime("second", depends_on=("first",)), runtime("first")]

    extended = MappingProxyType({**TEMPLATES, "backwards": backwards})
    monkeypatch.setattr(mission_templates, "TEMPLATES", extended)
    with pytest.raises(AntiFailurePlanningError, match="not declared before it"):
        build_workflow(MissionSpec("backwards", {}))


@pytest.mark.parametrize(
    ("params", "dropped"),
    [
        ({"checks": 10, "strict": True}, "check-5"),
        ({"checks": 0, "review": 3, "strict": True}, "review-2"),
        ({"checks": 2, "review": True, "strict": True}, None),
    ],
)
def test_strict_mode_refuses_instead_of_truncating(params, dropped):
    if dropped is None:
        assert len(build_workflow(MissionSpec("daily_loop", params)).steps) == MAX_STEPS
        return
    with pytest.raises(StepLimitExceeded) as caught:
        build_workflow(MissionSpec("daily_loop", params))
    assert isinstance(caught.value, AntiFailurePlanningError)
    assert dropped in caught.value.dropped
    assert "strict mode refuses to truncate" in str(caught.value)


def test_unknown_params_are_kept_and_listed_or_refused_in_strict_mode():
    workflow = build_workflow(MissionSpec("daily_loop", {"priority": "high", "chekcs": 3}))
    assert workflow.meta("ignored_params") == ("chekcs", "priority")
    assert dict(workflow.meta("params")) == {"chekcs": 3, "priority": "high"}

    with pytest.raises(MissionParamError) as caught:
        build_workflow(MissionSpec("daily_loop", {"chekcs": 3, "strict": True}))
    assert caught.value.param == "chekcs"


# ------------------------------------------------------------------------------------------
# Determinism and immutability
# ------------------------------------------------------------------------------------------


def test_identical_missions_give_identical_workflows():
    first = build_workflow(MissionSpec("daily_loop", {"priority": "high"}))
    second = build_workflow(MissionSpec("daily_loop", {"priority": "high"}))

    assert first == second
    assert first.canonical_json() == second.canonical_json()
    assert first.workflow_hash() == second.workflow_hash()


def test_five_builds_are_byte_identical():
    mission = MissionSpec("run_tests", {"target": "runtime", "verbose": True})
    outputs = {build_workflow(mission).canonical_json().encode("utf-8") for _ in range(5)}
    assert len(outputs) == 1


def test_builds_agree_across_interpreters_with_different_hash_seeds():
    script = (
        "import json, sys\n"
        "from planning.missions import MissionSpec, build_workflow\n"
        "for kind, params in json.loads(sys.argv[1]):\n"
        "    print(build_workflow(MissionSpec(kind, params)).workflow_hash())\n"
    )
    missions = [
        ("daily_loop", {"focus": "é ünïcode", "checks": 10, "review": 2, "z": 1.5, "a": None}),
        ("run_tests", {"target": "p", "args": "-x -k 'a or b'", "verbose": True}),
    ]
    expected = [
        build_workflow(MissionSpec(kind, params)).workflow_hash() for kind, params in missions
    ]
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script, json.dumps(missions)],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60,
        )
        assert done.stdout.split() == expected


def test_params_are_preserved_sorted_in_metadata():
    workflow = build_workflow(
        MissionSpec("run_tests", {"verbose": True, "target": "runtime", "args": "-x"})
    )

    assert workflow.meta("params") == (("args", "-x"), ("target", "runtime"), ("verbose", True))
    keys = [key for key, _ in workflow.metadata]
    assert keys == sorted(keys)
    assert workflow.meta("template_version") == mission_templates.TEMPLATE_VERSION
    same = MissionSpec("run_tests", {"target": "runtime", "verbose": True, "args": "-x"})
    assert workflow.meta("mission_hash") == mission_hash(same)
    assert workflow.to_json()["metadata"]["params"] == {
        "args": "-x",
        "target": "runtime",
        "verbose": True,
    }


def test_inputs_are_never_mutated():
    params = {"checks": 10, "focus": "x", "review": 2}
    before = copy.deepcopy(params)
    mission = MissionSpec("daily_loop", params)
    build_workflow(mission)
    assert params == before

    params["checks"] = 1  # the spec holds its own copy
    assert mission.params["checks"] == 10
    with pytest.raises(TypeError):
        mission.params["checks"] = 3  # type: ignore[index]

    frozen = MappingProxyType({"target": "p", "args": "-x"})
    workflow = build_workflow(MissionSpec("run_tests", frozen))
    assert dict(frozen) == {"target": "p", "args": "-x"}
    assert workflow.meta("params") == (("args", "-x"), ("target", "p"))


def test_mission_spec_holds_only_scalars_and_compares_canonically():
    with pytest.raises(MissionParamError) as caught:
        MissionSpec("daily_loop", {"focus": ["a"]})
    assert caught.value.param == "focus"
    with pytest.raises(MissionParamError):
        MissionSpec("daily_loop", {"x": float("nan")})
    with pytest.raises(AntiFailurePlanningError):
        MissionSpec("", {})

    assert MissionSpec("t", {"a": 1, "b": 2}) == MissionSpec("t", {"b": 2, "a": 1})
    assert hash(MissionSpec("t", {"a": 1})) == hash(MissionSpec("t", {"a": 1}))
    # Equal in Python, different missions: their canonical JSON (and hash) differ.
    assert MissionSpec("t", {"a": 1}) != MissionSpec("t", {"a": True})
    assert mission_hash(MissionSpec("t", {"a": 1})) != mission_hash(MissionSpec("t", {"a": True}))


# ------------------------------------------------------------------------------------------
# The envelope
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([WorkflowStep("a", "shell", command="true")], "kind 'shell' is not allowed"),
        ([runtime(f"s{i}") for i in range(6)], "6 steps; at most 5"),
        ([human("h1"), human("h2"), human("h3")], "3 human steps (h1, h2, h3)"),
        ([runtime("a", depends_on=("ghost",))], "unknown dependency 'ghost'"),
        (
            [runtime("a", depends_on=("b",)), runtime("b", depends_on=("a",))],
            "cycle: a -> b -> a",
        ),
        ([runtime("a"), runtime("a")], "duplicate step id 'a'"),
        ([WorkflowStep("a", "runtime")], "exactly one of 'command' or 'callable'"),
        ([WorkflowStep("a", "human")], "needs a non-empty 'prompt'"),
        ([], "at least one step"),
    ],
)
def test_envelope_violations_are_refused(steps, expected):
    workflow = WorkflowDefinition("hand_made", tuple(steps))

    with pytest.raises(EnvelopeViolation) as caught:
        validate_envelope(workflow)
    assert isinstance(caught.value, AntiFailurePlanningError)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
    with pytest.raises(EnvelopeViolation):
        workflow_to_plan(workflow)


# ------------------------------------------------------------------------------------------
# As a workstream plan
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mission_type", "params"),
    [(kind, params) for kind, params in sorted(EXAMPLE_PARAMS.items())]
    + [("daily_loop", {"review": True, "checks": 2, "project": "src"})],
)
def test_the_plan_document_loads_with_load_plan(tmp_path, mission_type, params):
    workflow = build_workflow(MissionSpec(mission_type, params))
    document = workflow_to_plan(workflow)
    assert schema_issues("workstream.v1.json", document) == []
    path = tmp_path / "plans" / "mission.json"
    path.parent.mkdir()
    path.write_text(json.dumps(document))

    plan = load_plan(path)

    (workstream,) = plan.workstreams
    assert workstream.id == f"mission-{mission_type}"
    assert [task.id for task in workstream.tasks] == ids(workflow)
    for task, step in zip(workstream.tasks, workflow.steps, strict=True):
        assert task.depends_on == tuple(f"{workstream.id}/{dep}" for dep in step.depends_on)
        if step.kind == "human":
            assert (task.tool, task.prompt) == ("human", step.prompt)
        elif step.callable:
            assert (task.tool, task.callable, task.args) == ("python", step.callable, step.args)
        else:
            assert (task.tool, task.command) == ("shell", step.command)
        assert task.timeout_s == step.timeout_s
        assert tuple(check.command for check in task.acceptance) == step.acceptance
        if step.cwd is not None:
            assert task.cwd == os.path.normpath(path.parent / step.cwd)
    assert document["metadata"] == {
        "mission_type": mission_type,
        "mission_hash": workflow.meta("mission_hash"),
        "workflow_hash": workflow.workflow_hash(),
    }


def test_plan_ids_and_base_dir(tmp_path):
    workflow = build_workflow(MissionSpec("run_tests", {"target": "proj"}))

    document = workflow_to_plan(workflow, workstream_id="tests", base_dir=tmp_path / "here")
    assert document["id"] == "tests"
    assert {task["cwd"] for task in document["tasks"]} == {str(tmp_path / "here" / "proj")}

    absolute = build_workflow(MissionSpec("run_tests", {"target": str(tmp_path)}))
    document = workflow_to_plan(absolute, base_dir="/elsewhere")
    assert {task["cwd"] for task in document["tasks"]} == {str(tmp_path)}
    with pytest.raises(ValueError):
        workflow_to_plan(workflow, workstream_id="not an id")


def test_run_tests_steps_really_run_a_projects_tests(tmp_path):
    """The commands, run as the shell adapter runs them (``/bin/sh -c`` in cwd, the runtime's
    interpreter first on PATH), list, run and report the target project's tests."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert True\n"
        "def test_bad():\n    assert 1 == 2\n"
        "@pytest.mark.skip\ndef test_skipped():\n    pass\n"
    )
    workflow = build_workflow(MissionSpec("run_tests", {"target": "project"}))
    plan = load_plan(_write(tmp_path / "plan.json", workflow_to_plan(workflow)))
    tasks = {task.id: task for task in plan.tasks}
    path = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))
    env = {**os.environ, "PATH": path}

    def sh(task):
        return subprocess.run(
            ["/bin/sh", "-c", task.command],
            cwd=task.cwd, env=env, capture_output=True, text=True, timeout=120,
        )

    discovered = sh(tasks["discover"])
    assert discovered.returncode == 0, discovered.stderr
    assert "test_sample.py::test_ok" in discovered.stdout
    assert "test_sample.py::test_bad" in discovered.stdout

    executed = sh(tasks["execute"])
    assert executed.returncode == 1  # a failing test fails the step (and blocks the report)
    assert (project / REPORT_FILE).is_file()

    report = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from planning.mission_report import summarise_junit as f; "
            "sys.exit(1 if f(*json.loads(sys.argv[1])) is False else 0)",
            json.dumps(tasks["report"].args),
        ],
        cwd=tasks["report"].cwd, env=env, capture_output=True, text=True, timeout=60,
    )
    assert report.returncode == 0, report.stderr
    assert "tests: 3, passed: 1, failures: 1, errors: 0, skipped: 1" in report.stdout


def _write(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


# ------------------------------------------------------------------------------------------
# The report step
# ------------------------------------------------------------------------------------------


def test_summarise_junit_counts_and_fails_only_when_the_report_is_missing(tmp_path, capsys):
    report = tmp_path / "r.xml"
    report.write_text(
        '<?xml version="1.0"?><testsuites>'
        '<testsuite name="a" tests="4" failures="1" errors="1" skipped="1"/>'
        '<testsuite name="b" tests="2" failures="0" errors="0" skipped="0"/></testsuites>'
    )
    expected = {"tests": 6, "failures": 1, "errors": 1, "skipped": 1, "passed": 3}

    assert summarise_junit(str(report)) == expected
    assert "tests: 6, passed: 3" in capsys.readouterr().out
    assert summarise_junit(str(tmp_path / "absent.xml")) is False
    assert "no test report" in capsys.readouterr().out

    single = tmp_path / "one.xml"
    single.write_text('<testsuite tests="2" failures="0" errors="0" skipped="0"/>')
    assert junit_counts(single)["passed"] == 2
    (tmp_path / "bad.xml").write_text("not xml")
    with pytest.raises(ValueError):
        summarise_junit(str(tmp_path / "bad.xml"))


# ------------------------------------------------------------------------------------------
# Mission files
# ------------------------------------------------------------------------------------------


def test_load_mission_reads_json_and_yaml(tmp_path):
    (tmp_path / "m.json").write_text(
        '{"type": "run_tests", "params": {"target": "p", "verbose": true}}'
    )
    (tmp_path / "m.yaml").write_text("type: daily_loop\nparams:\n  checks: 3\n")
    (tmp_path / "bare.json").write_text('{"type": "daily_loop"}')

    expected = MissionSpec("run_tests", {"target": "p", "verbose": True})
    assert load_mission(tmp_path / "m.json") == expected
    assert load_mission(tmp_path / "m.yaml") == MissionSpec("daily_loop", {"checks": 3})
    assert load_mission(tmp_path / "bare.json") == MissionSpec("daily_loop", {})


@pytest.mark.parametrize(
    ("name", "text", "where", "message"),
    [
        ("m.json", '{"params": {}}', "$", "missing required property 'type'"),
        ("m.json", '{"type": "daily_loop", "parms": {}}', "$.parms", "did you mean 'params'?"),
        (
            "m.json",
            '{"type": "daily_loop", "params": {"focus": ["a"]}}',
            "$.params.focus",
            "a string, number, boolean or null",
        ),
        ("m.json", '{"type": "Daily Loop"}', "$.type", "a lower-case mission type"),
        ("m.json", '["daily_loop"]', "$", "a mission file must be an object"),
        ("m.json", '{"type": ', "$", "malformed JSON"),
        ("m.json", '{"type": "x", "params": {"a": "\\ud800"}}', "$.params.a", "not valid Unicode"),
        ("m.txt", '{"type": "daily_loop"}', "$", "not a mission file"),
    ],
)
def test_load_mission_reports_the_file_and_json_path(tmp_path, name, text, where, message):
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(PlanError) as caught:
        load_mission(path)
    issue = caught.value.issues[0]
    assert (issue.file, issue.json_path) == (str(path), where)
    assert message in issue.message


def test_load_mission_refuses_a_missing_file(tmp_path):
    with pytest.raises(PlanError, match="no such file"):
        load_mission(tmp_path / "absent.json")


def test_mission_schema_file_is_a_valid_schema():
    document = {"type": "daily_loop", "params": {"a": 1.5, "b": None}}
    assert schema_issues("mission.v1.json", document) == []


# ------------------------------------------------------------------------------------------
# Receipts and halted state
# ------------------------------------------------------------------------------------------


def _daily_with_review():
    return build_workflow(MissionSpec("daily_loop", {"review": True, "focus": "release"}))


def _all_done():
    return {
        "confirm-priorities": {
            "decision": "approved", "by": "alice", "comment": "go",
            "decided_at": "2026-01-01T09:00:00Z",
        },
        "check-1": {
            "state": "COMPLETED", "exit_code": 0,
            "started_at": "2026-01-01T09:00:01Z", "finished_at": "2026-01-01T09:00:02Z",
        },
        "check-2": {"state": "COMPLETED", "exit_code": 0},
        "summary": {"state": "COMPLETED", "exit_code": 0},
        "review": {"state": "COMPLETED", "decision": "approved", "by": "bob", "comment": "fine"},
    }


def test_receipts_are_deterministic_and_differ_only_in_ids():
    workflow = _daily_with_review()
    outcomes = _all_done()
    snapshot = copy.deepcopy(outcomes)

    first = receipt(workflow, "run-1", outcomes)
    again = receipt(workflow, "run-1", outcomes)
    later = {**outcomes["check-2"], "finished_at": "2027-02-02T00:00:00Z"}
    other_run = receipt(workflow, "run-2", {**outcomes, "check-2": later})

    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert outcomes == snapshot
    assert other_run["content"] == first["content"]
    assert other_run["ids"] != first["ids"]
    assert {key for key in first if first[key] != other_run[key]} == {"ids"}
    assert receipt_hash(first) == receipt_hash(other_run) == first["receipt_hash"]
    assert first["ids"] == {
        "run_id": "run-1",
        "timestamps": {
            "check-1": {
                "started_at": "2026-01-01T09:00:01Z",
                "finished_at": "2026-01-01T09:00:02Z",
            },
            "confirm-priorities": {"decided_at": "2026-01-01T09:00:00Z"},
        },
    }
    assert receipt_lineage(first) == {
        "mission_hash": workflow.meta("mission_hash"),
        "workflow_hash": workflow.workflow_hash(),
        "run_id": "run-1",
    }
    assert first["content"]["status"] == "completed"


def test_human_steps_are_recorded_in_the_receipt():
    content = receipt(_daily_with_review(), "run-1", _all_done())["content"]
    recorded = {step["id"]: step for step in content["steps"] if step["kind"] == "human"}

    assert recorded == {
        "confirm-priorities": {
            "id": "confirm-priorities", "kind": "human", "title": "Confirm today's priorities",
            "state": "completed", "decision": "approved", "by": "alice", "comment": "go",
        },
        "review": {
            "id": "review", "kind": "human", "title": "Review the day",
            "state": "completed", "decision": "approved", "by": "bob", "comment": "fine",
        },
    }


def test_a_failing_step_halts_with_a_deterministic_state():
    workflow = _daily_with_review()
    outcomes = {
        "confirm-priorities": {"decision": "approved", "by": "alice"},
        "check-1": {"state": "FAILED", "exit_code": 1},
    }

    state = halted_state(workflow, outcomes)

    assert state == {
        "status": "failed",
        "halted_at": "check-1",
        "steps": [
            {"id": "confirm-priorities", "state": "completed"},
            {"id": "check-1", "state": "failed"},
            {"id": "check-2", "state": "not_run"},
            {"id": "summary", "state": "blocked"},
            {"id": "review", "state": "blocked"},
        ],
    }
    assert halted_state(workflow, dict(reversed(list(outcomes.items())))) == state
    content = receipt(workflow, "run-9", outcomes)["content"]
    assert (content["status"], content["halted_at"]) == ("failed", "check-1")
    assert [step["state"] for step in content["steps"]] == [
        entry["state"] for entry in state["steps"]
    ]


def test_a_rejected_approval_blocks_everything_after_it():
    workflow = _daily_with_review()
    rejected = {"confirm-priorities": {"decision": "rejected", "by": "carol", "comment": "no"}}
    state = halted_state(workflow, rejected)

    assert state["status"] == "failed" and state["halted_at"] == "confirm-priorities"
    assert [entry["state"] for entry in state["steps"]] == ["rejected"] + ["blocked"] * 4
    content = receipt(workflow, "r", rejected)["content"]
    assert content["steps"][0]["by"] == "carol" and content["steps"][0]["comment"] == "no"


def test_an_unfinished_run_is_incomplete_and_bad_outcomes_are_refused():
    workflow = _daily_with_review()
    assert halted_state(workflow, {})["status"] == "incomplete"
    waiting = halted_state(workflow, {"confirm-priorities": {"state": "AWAITING_APPROVAL"}})
    assert waiting["status"] == "incomplete"
    assert waiting["steps"][:2] == [
        {"id": "confirm-priorities", "state": "awaiting_approval"},
        {"id": "check-1", "state": "not_run"},
    ]
    with pytest.raises(ValueError, match="unknown steps: ghost"):
        receipt(workflow, "r", {"ghost": {"state": "COMPLETED"}})
    with pytest.raises(ValueError, match="'decision'"):
        receipt(workflow, "r", {"check-1": {"decision": "approved"}})
    with pytest.raises(ValueError, match="needs a 'state'"):
        halted_state(workflow, {"check-1": {}})
    with pytest.raises(EnvelopeViolation):
        halted_state(WorkflowDefinition("x", (WorkflowStep("a", "shell", command="true"),)), {})
