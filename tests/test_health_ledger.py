"""`orchestrate health` answers from the ledger when no runtime listens (database, schema, the
last runtime's heartbeat, run-record integrity), and a live runtime is unhealthy when every
adapter a run needs has an open circuit."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from domain.health import Liveness, adapters_needed, all_circuits_open, check_run_record, liveness
from domain.routing import AdapterInfo, RouterConfig, Rule
from persistence.migrate import SCHEMA_VERSION
from tests.conftest import ORCHESTRATE, ledger, wait_until

TASK = {"task_key": "w/a", "state": "COMPLETED", "attempts": 1}
ATTEMPT = {"step_name": "w/a", "attempt": 1, "status": "COMPLETED"}


# -- the decisions, pure -------------------------------------------------------------------------
def test_a_consistent_completed_run_has_no_findings():
    assert check_run_record({"run_id": "r", "status": "completed"}, [TASK], [ATTEMPT], runtime_alive=False) == []


@pytest.mark.parametrize(("run", "task", "attempts", "says"), [
    ("completed", {**TASK, "state": "FAILED"}, [ATTEMPT], "did not complete"),
    ("failed", {**TASK, "state": "IN_PROGRESS"}, [{**ATTEMPT, "status": "IN_PROGRESS"}], "not finished"),
    ("completed", TASK, [ATTEMPT, {**ATTEMPT, "attempt": 2}], "2 completed attempts"),
    ("completed", TASK, [{**ATTEMPT, "status": "FAILED"}], "without a completed attempt"),
    ("completed", {**TASK, "attempts": 0}, [ATTEMPT], "counts 0 attempt(s) but 1"),
    ("completed", TASK, [ATTEMPT, {**ATTEMPT, "step_name": "w/ghost"}], "unknown task 'w/ghost'"),
])
def test_contradictions_in_a_run_record_are_errors(run, task, attempts, says):
    findings = check_run_record({"run_id": "r", "status": run}, [task], attempts, runtime_alive=False)
    assert any(f.error and says in f.text for f in findings), findings


def test_a_run_left_running_by_a_dead_runtime_is_a_warning_saying_how_to_resume():
    task = {**TASK, "state": "IN_PROGRESS"}
    attempt = {**ATTEMPT, "status": "IN_PROGRESS"}
    dead = check_run_record({"run_id": "r", "status": "running"}, [task], [attempt], runtime_alive=False)
    assert [f.error for f in dead] == [False, False]
    assert all("orchestrate execute --run r" in f.text for f in dead)
    assert check_run_record({"run_id": "r", "status": "running"}, [task], [attempt], runtime_alive=True) == []


def test_liveness_from_the_heartbeat_and_the_state_directory_lock():
    beat = {"beat_at": "2026-01-01T00:00:00Z", "stopped_at": None}
    assert liveness(None, "2026-01-01T00:00:01Z", 5) is Liveness.NONE
    assert liveness({**beat, "stopped_at": "2026-01-01T00:00:00Z"}, "2026-01-01T00:00:01Z", 5) is Liveness.STOPPED
    assert liveness(beat, "2026-01-01T00:00:14Z", 5) is Liveness.RUNNING
    assert liveness(beat, "2026-01-01T00:00:16Z", 5) is Liveness.LOST
    assert liveness(beat, "2026-01-01T00:00:01Z", 5, lock_held=False) is Liveness.LOST  # killed a moment ago
    assert liveness(beat, "2026-01-01T01:00:00Z", 5, lock_held=True) is Liveness.RUNNING


def test_the_adapters_a_run_needs_and_whether_all_are_open():
    config = RouterConfig(adapters=(AdapterInfo("sh", "shell", fallback="sh2"), AdapterInfo("sh2", "shell", tools=()),
                                    AdapterInfo("py", "python"), AdapterInfo("doc", "agent", tools=())),
                          rules=(Rule(adapters=("doc",), tool="agent"),))
    assert adapters_needed(["shell"], config) == {"sh", "sh2"}
    assert adapters_needed(["python", "agent"], config) == {"py", "doc"}
    assert all_circuits_open({"sh", "sh2"}, {"sh": "open", "sh2": "open", "py": "closed"})
    assert not all_circuits_open({"sh", "sh2"}, {"sh": "open", "sh2": "half_open"})
    assert not all_circuits_open(set(), {"sh": "open"})


# -- no runtime: from the ledger -------------------------------------------------------------------
def plan(tmp_path: Path, tasks: list[dict]) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"id": "w", "tasks": tasks}))
    return path


def test_health_without_a_runtime_answers_from_the_ledger(tmp_path, orchestrate):
    nothing = orchestrate("health")
    assert nothing.code == 0 and "no ledger at" in nothing.out and not (tmp_path / ".state" / "orchestration.db").exists()
    assert orchestrate("run", str(plan(tmp_path, [{"id": "a", "tool": "shell", "command": "true"}]))).code == 0
    result = orchestrate("health")
    assert result.code == 0, result.out + result.err
    assert result.out.startswith("healthy (from the ledger: no orchestrate runtime is listening")
    assert "database: reachable" in result.out and f"schema version {SCHEMA_VERSION}" in result.out
    assert f"last runtime: pid " in result.out and "stopped at" in result.out
    assert "record consistent" in result.out
    report = orchestrate("health", "--json").json()
    assert report["last_runtime"]["liveness"] == "stopped" and report["findings"] == []


def test_a_damaged_run_record_is_unhealthy_exit_1_naming_the_contradiction(tmp_path, orchestrate):
    assert orchestrate("run", str(plan(tmp_path, [{"id": "a", "tool": "shell", "command": "true"}]))).code == 0
    with sqlite3.connect(tmp_path / ".state" / "orchestration.db") as db:
        db.execute("update step_attempts set status = 'FAILED'")
    result = orchestrate("health")
    assert result.code == 1 and result.out.startswith("UNHEALTHY")
    assert "✗ task w/a is COMPLETED without a completed attempt" in result.out


def test_a_database_that_cannot_be_read_is_exit_3(tmp_path, orchestrate):
    garbage = tmp_path / "not-a-db.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    result = orchestrate("health", env={"PIPELINE_DB_PATH": str(garbage)})
    assert result.code == 3 and "UNREACHABLE" in result.out and "Traceback" not in result.out + result.err


def test_after_kill_9_health_says_the_runtime_vanished_and_the_run_needs_resuming(tmp_path, orchestrate):
    hold = tmp_path / "hold"
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run",
                                str(plan(tmp_path, [{"id": "wait", "tool": "shell",
                                                     "command": f"while [ ! -e {hold} ]; do sleep 0.05; done"}]))],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def running() -> bool:
            try:
                return ledger(tmp_path).execute(
                    "select count(*) from step_attempts where status = 'IN_PROGRESS'").fetchone()[0] == 1
            except sqlite3.Error:
                return False
        wait_until(running, timeout=60, what="the task to be recorded running")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    hold.touch()  # lets the orphaned task end
    result = orchestrate("health")
    assert result.code == 0, result.out + result.err  # nothing contradicts itself: it is resumable
    assert "never said it stopped: killed or its machine went down" in result.out
    assert "! run is running but no runtime is running it; resume it with `orchestrate execute --run" in result.out
    assert "! attempts left open by a runtime that stopped: w/wait (attempt 1)" in result.out


# -- a live runtime --------------------------------------------------------------------------------
def test_a_live_runtime_whose_every_needed_circuit_is_open_is_unhealthy(tmp_path, orchestrate):
    sentinel = tmp_path / "tool-is-down"
    sentinel.touch()
    (tmp_path / "router_config.json").write_text(json.dumps({"adapters": [
        {"name": "flaky", "type": "custom", "class": "tests.fault_adapters:SwitchableShell",
         "settings": {"broken_while": str(sentinel)}, "tools": ["shell"],
         "breaker": {"max_failures": 1, "reset_timeout_s": 600}},
        {"name": "python", "type": "python"}]}))
    tasks = [{"id": f"t{i}", "tool": "shell", "command": "true", "retry": {"max_attempts": 5, "backoff_s": 0.05}}
             for i in range(3)]
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", str(plan(tmp_path, tasks)),
                                "--safe-mode-after", "600"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        def unhealthy():
            result = orchestrate("health")
            return result.code == 1 and "circuits: flaky=open" in result.out and result
        result = wait_until(unhealthy, timeout=60, interval=0.2, what="health to report the open circuit")
        assert result.out.startswith("runtime UNHEALTHY")
        assert "every adapter it needs has an open circuit (flaky)" in result.out
        report = orchestrate("health", "--json").json()
        assert not report["healthy"] and list(report["all_adapters_open"].values()) == [["flaky"]]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    # The outage is in the resilience stream: the failures' signature, the retries, the circuit.
    seen = [json.loads(line) for line in (tmp_path / ".state" / "logs" / "resilience.jsonl").read_text().splitlines()]
    events = {line["event"] for line in seen}
    assert {"error_counted", "retry_scheduled", "circuit_open"} <= events, events
    assert any(line["event"] == "circuit_open" and line["adapter"] == "flaky" for line in seen)
