"""Bad input gets a clear error, exit 2, no traceback, and leaves nothing in the ledger."""

from __future__ import annotations

import json
import sqlite3

import pytest
import structlog

from persistence.migrate import SCHEMA_VERSION


def runs_in_ledger(tmp_path) -> int:
    db_path = tmp_path / ".state" / "orchestration.db"
    if not db_path.exists():
        return 0
    return sqlite3.connect(db_path).execute("select count(*) from runs").fetchone()[0]


BAD_PLANS = {
    "malformed JSON": ('{"id": "ws", "tasks": [', ["plan.json", "$", "line 1"]),
    "schema violation": (
        json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "shell", "command": "true", "timeout_s": "soon"}]}),
        ["plan.json", "$.tasks[0].timeout_s", "number"],
    ),
    "duplicate task id": (
        json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "shell", "command": "true"},
                                           {"id": "t", "tool": "shell", "command": "true"}]}),
        ["plan.json", "$.tasks[1].id", "duplicate"],
    ),
    "unknown dependency": (
        json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "shell", "command": "true", "depends_on": ["ghost"]}]}),
        ["plan.json", "$.tasks[0].depends_on[0]", "ghost"],
    ),
    "cycle": (
        json.dumps({"id": "ws", "tasks": [
            {"id": "a", "tool": "shell", "command": "true", "depends_on": ["c"]},
            {"id": "b", "tool": "shell", "command": "true", "depends_on": ["a"]},
            {"id": "c", "tool": "shell", "command": "true", "depends_on": ["b"]}]}),
        ["plan.json", "cycle", "ws/a -> ws/c -> ws/b -> ws/a"],
    ),
    "NUL in a command": (  # no process can be given it: refused here, not counted against the tool
        json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "shell", "command": "echo a\u0000b"}]}),
        ["plan.json", "$.tasks[0].command", "without NUL"],
    ),
    "NUL in a check's command": (
        json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "shell", "command": "true",
                                           "acceptance": [{"kind": "command", "command": "test\u0000x"}]}]}),
        ["plan.json", "$.tasks[0].acceptance[0].command", "without NUL"],
    ),
    "NUL in a cwd": (
        json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "shell", "command": "pwd", "cwd": "/tmp\u0000/etc"}]}),
        ["plan.json", "$.tasks[0].cwd", "without NUL"],
    ),
    "unknown tool": (
        json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "teleport", "command": "true"}]}),
        ["plan.json", "$.tasks[0].tool", "teleport", "shell"],
    ),
}


@pytest.mark.parametrize("kind", BAD_PLANS)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_bad_plan_exits_2_naming_file_path_and_reason_and_creates_no_run(tmp_path, orchestrate, kind, command):
    text, expected = BAD_PLANS[kind]
    (tmp_path / "plan.json").write_text(text)
    result = orchestrate(command, "plan.json")
    assert result.code == 2, result.out + result.err
    for fragment in expected:
        assert fragment in result.err, (fragment, result.err)
    assert "Traceback" not in result.err
    assert runs_in_ledger(tmp_path) == 0


def test_several_problems_are_reported_together(tmp_path, orchestrate):
    (tmp_path / "plan.json").write_text(json.dumps({"id": "ws", "tasks": [
        {"id": "t", "tool": "shell", "command": "true", "priority": "high"},
        {"id": "u", "tool": "shell", "timeout_s": -1}]}))
    result = orchestrate("validate", "plan.json")
    assert result.code == 2
    assert "$.tasks[0].priority" in result.err and "$.tasks[1]" in result.err
    assert "problems" in result.err


def test_a_missing_plan_path_is_a_usage_error(tmp_path, orchestrate):
    result = orchestrate("run", "nowhere.json")
    assert result.code == 2 and "nowhere.json" in result.err and "Traceback" not in result.err


def test_an_unreachable_database_is_refused_with_exit_3_and_one_clear_line(tmp_path, orchestrate):
    (tmp_path / "plan.json").write_text(json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]}))
    (tmp_path / "blocker").write_text("a file where a directory should be")
    result = orchestrate("run", "plan.json", env={"PIPELINE_DB_PATH": str(tmp_path / "blocker" / "db.sqlite")})
    assert result.code == 3, result.out + result.err
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_executing_an_unknown_run_is_a_usage_error(tmp_path, orchestrate):
    result = orchestrate("execute", "--run", "run-doesnotexist")
    assert result.code == 2 and "run-doesnotexist" in result.err


def test_db_init_is_idempotent_and_says_what_it_did(tmp_path, orchestrate):
    first = orchestrate("db", "init")
    assert first.code == 0 and "applied" in first.out
    second = orchestrate("db", "init")
    assert second.code == 0 and "up to date" in second.out
    inspected = orchestrate("db", "inspect", "--json").json()
    assert inspected["schema_version"] == SCHEMA_VERSION and inspected["runs"] == {}


def test_orchestrate_db_url_overrides_the_default_location(tmp_path, orchestrate):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert orchestrate("db", "init", env={"ORCHESTRATE_DB_URL": url}).code == 0
    assert (tmp_path / "elsewhere.db").exists()
    assert not (tmp_path / ".state" / "orchestration.db").exists()


def test_missing_schemas_put_the_runtime_in_safe_mode_with_exit_3(tmp_path, monkeypatch, capsys):
    from cli.main import main
    from planning import schemas

    (tmp_path / "plan.json").write_text(json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]}))
    monkeypatch.setattr(schemas, "schema_dir", lambda: tmp_path / "no-schemas-here")
    schemas.load_schema.cache_clear()
    schemas.validator.cache_clear()
    try:
        code = main(["--state-dir", str(tmp_path / ".state"), "run", str(tmp_path / "plan.json")])
    finally:
        schemas.load_schema.cache_clear()
        schemas.validator.cache_clear()
        # main() points structlog at this test's captured stderr; later tests must not log there.
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert code == 3
    assert err.strip().count("\n") == 0 and "safe mode" in err and "missing" in err
    assert not (tmp_path / ".state" / "orchestration.db").exists()


def test_an_unknown_tool_in_a_bundle_is_named_at_its_json_path(tmp_path, orchestrate):
    (tmp_path / "plan.json").write_text(json.dumps({"workstreams": [
        {"id": "a", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]},
        {"id": "b", "tasks": [{"id": "t", "tool": "shell", "command": "true"},
                              {"id": "u", "tool": "teleport", "command": "true"}]}]}))
    result = orchestrate("validate", "plan.json")
    assert result.code == 2
    assert "plan.json: $.workstreams[1].tasks[1].tool: unknown tool 'teleport'" in result.err


@pytest.mark.parametrize("option", ["--safe-mode-after", "--db-stall-limit"])
@pytest.mark.parametrize("value", ["-5", "0", "nan", "soon"])
def test_a_time_limit_that_is_not_a_positive_number_is_refused_before_anything_runs(orchestrate, write_plan, option,
                                                                                      value, tmp_path):
    plan = write_plan({"id": "w", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]})
    result = orchestrate("run", str(plan), option, value)
    assert result.code == 2 and "expected a number of seconds" in result.err and "Traceback" not in result.err
    assert not (tmp_path / ".state" / "orchestration.db").exists()
