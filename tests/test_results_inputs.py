"""Results as inputs, through the real command line: upstream results reach python tasks as
keyword arguments and shell tasks as $ORCHESTRATE_INPUTS; results are JSON, large ones files."""

from __future__ import annotations

import json

from tests.conftest import ROOT, ledger

LAYERS, WIDTH, FAN_IN = 10, 100, 3


def layered_values_plan() -> dict:
    """1,000 python tasks in 10 layers of 100; each after the first takes the results of three
    tasks of the layer before as inputs ``u0..u2`` and checks them."""
    tasks = []
    for layer in range(LAYERS):
        for index in range(WIDTH):
            ups = [(layer - 1, (index + k) % WIDTH) for k in range(FAN_IN)] if layer else []
            tasks.append({
                "id": f"n{layer}_{index}", "tool": "python", "cwd": str(ROOT),
                "callable": "tests.sample_callables:layered_node", "args": [layer, index],
                "kwargs": {"expect": [list(up) for up in ups]},
                "depends_on": [f"n{a}_{b}" for a, b in ups],
                "inputs": {f"u{k}": f"n{a}_{b}" for k, (a, b) in enumerate(ups)},
            })
    return {"id": "values", "tasks": tasks}


def test_a_thousand_python_tasks_each_receive_and_verify_their_three_upstream_results(tmp_path, orchestrate,
                                                                                      write_plan):
    plan = write_plan(layered_values_plan())
    result = orchestrate("run", str(plan), "-j", "4", "--quiet", timeout=600)
    assert result.code == 0, result.out[-3000:] + result.err[-3000:]
    db = ledger(tmp_path)
    rows = db.execute("select step_name, status, result_json from step_attempts").fetchall()
    assert len(rows) == LAYERS * WIDTH and {row["status"] for row in rows} == {"COMPLETED"}
    for row in rows:
        layer, index = map(int, row["step_name"].removeprefix("values/n").split("_"))
        value = json.loads(row["result_json"])
        expected_in = sum((layer - 1) * 1000 + (index + k) % WIDTH for k in range(FAN_IN)) if layer else 0
        assert value == {"node": [layer, index], "check": layer * 1000 + index, "received": expected_in}, row


def test_a_shell_task_reads_its_inputs_from_a_file_and_writes_its_result_for_the_next(tmp_path, orchestrate,
                                                                                      write_plan):
    plan = write_plan({"id": "sh", "tasks": [
        {"id": "count", "tool": "shell", "command": "printf '{\"words\": 41}' > \"$ORCHESTRATE_OUTPUT\""},
        {"id": "nothing", "tool": "shell", "command": "true"},
        {"id": "add", "tool": "shell", "depends_on": ["count", "nothing"],
         "inputs": {"counted": "count", "none": "nothing"},
         "command": "python3 -c 'import json, os; d = json.load(open(os.environ[\"ORCHESTRATE_INPUTS\"])); "
                    "assert d == {\"counted\": {\"words\": 41}, \"none\": None}, d; "
                    "json.dump(d[\"counted\"][\"words\"] + 1, open(os.environ[\"ORCHESTRATE_OUTPUT\"], \"w\"))'"},
        {"id": "check", "tool": "python", "cwd": str(ROOT), "callable": "tests.sample_callables:measure",
         "depends_on": ["add"], "inputs": {"values": "add"}},
    ]})
    result = orchestrate("run", str(plan))
    # measure() takes len() of an int: it fails, and says so — the value 42 arrived as an int.
    assert result.code == 1, result.out + result.err
    db = ledger(tmp_path)
    results = dict(db.execute("select step_name, result_json from step_attempts").fetchall())
    assert results["sh/count"] == '{"words": 41}' and results["sh/add"] == "42"
    assert results["sh/nothing"] is None
    log_text = (tmp_path / ".state" / "logs").rglob("check.log").__next__().read_text()
    assert "TypeError: object of type 'int' has no len()" in log_text


def test_a_large_result_is_kept_as_a_file_and_reaches_python_and_shell_consumers(tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "big", "tasks": [
        {"id": "make", "tool": "python", "cwd": str(ROOT), "callable": "tests.sample_callables:big_list",
         "args": [3000, 100]},
        {"id": "py", "tool": "python", "cwd": str(ROOT), "callable": "tests.sample_callables:measure",
         "depends_on": ["make"], "inputs": {"values": "make"}},
        {"id": "sh", "tool": "shell", "depends_on": ["make"], "inputs": {"values": "make"},
         "command": "python3 -c 'import json, os; d = json.load(open(os.environ[\"ORCHESTRATE_INPUTS\"])); "
                    "assert len(d[\"values\"]) == 3000'"},
        {"id": "fresh", "tool": "python", "isolation": "process", "cwd": str(ROOT),
         "callable": "tests.sample_callables:measure", "depends_on": ["make"], "inputs": {"values": "make"}},
    ]})
    result = orchestrate("run", str(plan), env={"ORCHESTRATE_RESULT_INLINE_LIMIT": "10000"})
    assert result.code == 0, result.out + result.err
    db = ledger(tmp_path)
    made = db.execute("select result_json, result_file from step_attempts where step_name = 'big/make'").fetchone()
    assert made["result_json"] is None
    assert made["result_file"].startswith(str(tmp_path / ".state" / "results"))
    assert len(json.loads(open(made["result_file"]).read())) == 3000
    for consumer in ("big/py", "big/fresh"):  # a warm worker and a fresh interpreter
        measured = db.execute("select result_json from step_attempts where step_name = ?", (consumer,)).fetchone()[0]
        assert json.loads(measured) == {"count": 3000, "first": 100}


def test_a_result_json_cannot_hold_fails_the_task_naming_the_type(tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "bad", "tasks": [
        {"id": "py", "tool": "python", "cwd": str(ROOT), "callable": "tests.sample_callables:make_set"},
        {"id": "sh", "tool": "shell", "command": "echo '{not json' > \"$ORCHESTRATE_OUTPUT\""},
        {"id": "after", "tool": "shell", "command": "true", "depends_on": ["py"], "inputs": {"v": "py"}},
    ]})
    result = orchestrate("run", str(plan))
    assert result.code == 1
    assert ("bad/py: exit code 1: the result of tests.sample_callables:make_set is not JSON: it returned a set"
            in result.out), result.out
    assert "bad/sh: task bad/sh: what it wrote to $ORCHESTRATE_OUTPUT is not JSON" in result.out, result.out
    states = dict(ledger(tmp_path).execute("select task_key, state from tasks").fetchall())
    assert states == {"bad/py": "FAILED", "bad/sh": "FAILED", "bad/after": "BLOCKED"}


def test_bad_inputs_are_refused_when_the_plan_is_read_naming_the_task_and_field(tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "w", "tasks": [
        {"id": "a", "tool": "python", "callable": "m:f"},
        {"id": "b", "tool": "python", "callable": "m:f", "inputs": {"x": "a"}},
        {"id": "c", "tool": "python", "callable": "m:f", "depends_on": ["a"], "inputs": {"k": "a"}, "kwargs": {"k": 1}},
        {"id": "d", "tool": "human", "prompt": "ok?", "depends_on": ["a"], "inputs": {"x": "a"}},
        {"id": "e", "tool": "shell", "command": "true", "depends_on": ["a"], "inputs": {"not-a-name": "a"}},
    ]})
    for command in (("validate", str(plan)), ("run", str(plan))):
        result = orchestrate(*command)
        assert result.code == 2, result.out + result.err
        assert "Traceback" not in result.err
        assert ("$.tasks[1].inputs.x: input 'x' of task 'w/b' names 'w/a', which is not a dependency of it; "
                "add 'a' to its depends_on") in result.err
        assert "$.tasks[2].inputs.k: input 'k' of task 'w/c' is also one of its kwargs" in result.err
        assert "$.tasks[3].inputs: task 'w/d' has tool 'human', which takes no inputs" in result.err
        assert "$.tasks[4].inputs: key 'not-a-name' of 'inputs' must be an input name" in result.err
    assert not (tmp_path / ".state" / "orchestration.db").exists()  # nothing half-written


def test_a_files_out_pattern_that_matches_nothing_fails_the_task_naming_it(tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "w", "tasks": [
        {"id": "build", "tool": "shell", "command": "mkdir -p dist && touch dist/a.txt",
         "files_out": ["dist/*.txt", "dist/*.whl"]},
        {"id": "after", "tool": "shell", "command": "true", "depends_on": ["build"]},
    ]})
    result = orchestrate("run", str(plan))
    assert result.code == 1
    assert "w/build: task w/build: files_out[1] 'dist/*.whl' matched no file after it succeeded" in result.out
    states = dict(ledger(tmp_path).execute("select task_key, state from tasks").fetchall())
    assert states == {"w/build": "FAILED", "w/after": "BLOCKED"}


def test_a_resumed_run_hands_on_the_results_recorded_before(tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "w", "tasks": [
        {"id": "make", "tool": "python", "cwd": str(ROOT), "callable": "tests.sample_callables:big_list",
         "args": [2, 3]},
        {"id": "use", "tool": "shell", "depends_on": ["make"], "inputs": {"made": "make"},
         "command": "test -f go && cp \"$ORCHESTRATE_INPUTS\" got.json"},
    ]})
    first = orchestrate("run", str(plan))
    assert first.code == 1
    (tmp_path / "go").touch()
    second = orchestrate("run", str(plan))  # the same run goes on; make is not run again
    assert second.code == 0, second.out + second.err
    assert "resuming (1 already completed)" in second.out
    assert json.loads((tmp_path / "got.json").read_text()) == {"made": ["xxx", "xxx"]}
    attempts = dict(ledger(tmp_path).execute("select task_key, attempts from tasks").fetchall())
    assert attempts == {"w/make": 1, "w/use": 2}
