"""The foreground runtime through the real command line: the issue's acceptance, end to end."""

from __future__ import annotations

import shutil
import uuid

import psutil

from tests.conftest import ROOT, ledger, link_project_venv, parse


def test_quickstart_runs_to_completion_and_every_task_is_completed_with_timings(tmp_path, orchestrate, db_url):
    shutil.copytree(ROOT / "examples" / "quickstart", tmp_path / "quickstart",
                    ignore=shutil.ignore_patterns(".state", "out", "__pycache__"))
    where = tmp_path / "quickstart"
    link_project_venv(where)  # in the checkout, the quickstart's project finds the checkout's .venv
    result = orchestrate("run", "plan", cwd=where)
    assert result.code == 0, result.out + result.err
    assert "completed" in result.out and "✓ report/announce" in result.out
    run_id = result.out.split("run ", 1)[1].split()[0]
    shown = orchestrate("runs", "show", run_id, "--json", cwd=where).json()
    assert shown["status"] == "completed"
    assert len(shown["tasks"]) >= 8
    for task in shown["tasks"]:
        assert task["state"] == "COMPLETED", task
        assert task["started_at"] and task["finished_at"] and task["duration_s"] is not None
    assert {w["status"] for w in shown["workstreams"]} == {"done"}


def test_independent_tasks_run_in_parallel_up_to_the_concurrency_limit(tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "sleepers", "tasks": [
        {"id": f"s{i}", "tool": "shell", "command": "sleep 1"} for i in range(8)]})
    result = orchestrate("run", str(plan), "--concurrency", "4")
    assert result.code == 0, result.err
    attempts = ledger(tmp_path).execute("select started_at, completed_at from step_attempts").fetchall()
    assert len(attempts) == 8
    edges = sorted([(parse(a["started_at"]), 1) for a in attempts] + [(parse(a["completed_at"]), -1) for a in attempts])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 4
    first = min(parse(a["started_at"]) for a in attempts)
    last = max(parse(a["completed_at"]) for a in attempts)
    assert (last - first).total_seconds() < 8  # two waves of four, not eight in a row


def test_a_failed_task_blocks_its_dependants_while_other_branches_finish(tmp_path, orchestrate, write_plan):
    plan = write_plan({"workstreams": [
        {"id": "a", "tasks": [
            {"id": "breaks", "tool": "shell", "command": "echo boom >&2; exit 7"},
            {"id": "after", "tool": "shell", "command": "true", "depends_on": ["breaks"]}]},
        {"id": "b", "depends_on": ["a"], "tasks": [{"id": "later", "tool": "shell", "command": "true"}]},
        {"id": "c", "tasks": [{"id": "fine", "tool": "shell", "command": "true"}]},
    ]})
    result = orchestrate("run", str(plan))
    assert result.code == 1
    db = ledger(tmp_path)
    states = dict(db.execute("select task_key, state from tasks").fetchall())
    assert states == {"a/breaks": "FAILED", "a/after": "BLOCKED", "b/later": "BLOCKED", "c/fine": "COMPLETED"}
    workstreams = dict(db.execute("select ws_id, status from workstreams").fetchall())
    assert workstreams == {"a": "failed", "b": "blocked", "c": "done"}
    assert db.execute("select status from runs").fetchone()[0] == "partial"
    error = db.execute("select signature, count, error_code from errors").fetchone()
    assert error["count"] == 1 and error["error_code"] == "command_failed"
    assert "exit code 7" in result.out

    run_id = db.execute("select run_id from runs").fetchone()[0]
    again = orchestrate("execute", "--run", run_id)
    assert again.code == 1
    repeated = ledger(tmp_path).execute("select signature, count from errors").fetchall()
    assert [(r["signature"], r["count"]) for r in repeated] == [(error["signature"], 2)]


def test_a_timed_out_task_ends_timeout_and_no_process_of_its_tree_survives(tmp_path, orchestrate, write_plan):
    marker = f"orchestrate-test-{uuid.uuid4().hex}"
    plan = write_plan({"id": "slow", "tasks": [
        {"id": "hang", "tool": "shell", "command": "sh -c 'sleep 100 & sleep 100'", "timeout_s": 1,
         "env": {"TREE_MARKER": marker}}]})
    result = orchestrate("run", str(plan), timeout=60)
    assert result.code == 1
    db = ledger(tmp_path)
    assert db.execute("select state from tasks").fetchone()[0] == "TIMEOUT"
    attempt = db.execute("select pid, duration_s from step_attempts").fetchone()
    assert attempt["pid"] and attempt["duration_s"] < 30
    survivors = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get("TREE_MARKER") == marker:
                survivors.append(process.pid)
        except psutil.Error:
            continue
    assert survivors == []


def test_acceptance_gate_failure_fails_the_task_and_keeps_the_gate_output(tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "gated", "tasks": [
        {"id": "work", "tool": "shell", "command": "echo made > out.txt",
         "acceptance": [{"name": "has words", "command": "grep -q missing out.txt || { echo 'no missing here'; exit 1; }"}]}]})
    result = orchestrate("run", str(plan))
    assert result.code == 1
    db = ledger(tmp_path)
    attempt = db.execute("select status, error_class, gate_output from step_attempts").fetchone()
    assert attempt["status"] == "FAILED" and attempt["error_class"] == "gate"
    assert "no missing here" in attempt["gate_output"]
    transitions = [r[0] for r in db.execute(
        "select json_extract(payload_json, '$.to') from events where event_type = 'STATE_CHANGED' "
        "and json_extract(payload_json, '$.entity') = 'task' order by id")]
    assert transitions == ["QUEUED", "IN_PROGRESS", "VALIDATING", "FAILED"]


def test_request_is_idempotent_and_new_makes_another_run(tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "once", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]})
    first = orchestrate("request", "--workstream", str(plan), "--json").json()
    second = orchestrate("request", "--workstream", str(plan), "--json").json()
    assert first["created"] and not second["created"]
    assert first["run_id"] == second["run_id"]
    third = orchestrate("request", "--workstream", str(plan), "--new", "--json").json()
    assert third["created"] and third["run_id"] != first["run_id"]
    events = [r[0] for r in ledger(tmp_path).execute(
        "select event_type from events where run_id = ? order by id", (first["run_id"],))]
    assert events[:2] == ["RUN_CREATED", "EXECUTION_REQUEST_VALIDATED"]


def test_request_by_workstream_id_then_execute(tmp_path, orchestrate, write_plan):
    write_plan({"id": "model", "tasks": [{"id": "m", "tool": "shell", "command": "echo m > m.txt"}]},
               "workstreams/model.json")
    write_plan({"id": "api", "depends_on": ["model"], "tasks": [{"id": "a", "tool": "shell", "command": "test -f m.txt"}]},
               "workstreams/api.json")
    write_plan({"id": "other", "tasks": [{"id": "o", "tool": "shell", "command": "true"}]},
               "workstreams/other.json")
    created = orchestrate("request", "--workstream", "api", "--json")
    assert created.code == 0, created.err
    run_id = created.json()["run_id"]
    executed = orchestrate("execute", "--run", run_id)
    assert executed.code == 0, executed.out + executed.err
    keys = {r[0] for r in ledger(tmp_path).execute("select task_key from tasks where run_id = ?", (run_id,))}
    assert keys == {"model/m", "api/a"}
    missing = orchestrate("request", "--workstream", "nope")
    assert missing.code == 2 and "nope" in missing.err


def test_a_duplicate_run_id_is_refused_with_a_clear_error(tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "once", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]})
    assert orchestrate("request", "-w", str(plan), "--run-id", "run-fixed").code == 0
    again = orchestrate("request", "-w", str(plan), "--run-id", "run-fixed")
    assert again.code == 2 and "run-fixed" in again.err and "Traceback" not in again.err
