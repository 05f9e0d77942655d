"""Resilience, end to end through the real command line: crashes, restarts, breakers, retries,
process trees that try to escape, memory limits, and runtimes killed with SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from adapters.tools import MARKER_RUN
from tests.conftest import (
    ORCHESTRATE,
    ledger,
    ledger_errors,
    parse,
    runtime_env,
    wait_until,
)


def events(directory: Path, *types: str) -> list[tuple[str, dict]]:
    if not (directory / ".state" / "orchestration.db").exists():
        return []
    try:
        rows = ledger(directory).execute(
            f"select event_type, payload_json from events where event_type in ({','.join('?' * len(types))}) "
            "order by id",
            types,
        ).fetchall()
    except sqlite3.OperationalError:  # the runtime is still creating the schema
        return []
    return [(r["event_type"], json.loads(r["payload_json"] or "{}")) for r in rows]


def attempt_running(directory: Path, db_url: str | None = None) -> bool:
    """The ledger shows an attempt in progress (read without waiting on the writer's lock)."""
    query = "select 1 from step_attempts where status = 'IN_PROGRESS' limit 1"
    try:
        if db_url:
            return ledger(directory).execute(query).fetchone() is not None
        with sqlite3.connect(f"file:{directory / '.state' / 'orchestration.db'}?mode=ro", uri=True,
                             timeout=0.1) as db:
            return db.execute(query).fetchone() is not None
    except ledger_errors():
        return False


def write_json(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


def marked(run_id: str) -> list[int]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(MARKER_RUN) == run_id:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def test_an_adapter_that_raises_every_third_call_is_restarted_and_all_tasks_complete(tmp_path, orchestrate):
    write_json(tmp_path / "router_config.json", {"adapters": [
        {"name": "flaky", "type": "custom", "class": "tests.fault_adapters:EveryThirdCallRaises",
         "tools": ["shell"], "breaker": {"max_failures": 100}}]})
    plan = write_json(tmp_path / "plan.json", {"workstreams": [
        {"id": "w", "tasks": [{"id": f"t{i}", "tool": "shell", "command": "true"} for i in range(9)]}],
        "defaults": {"retry": {"max_attempts": 5, "backoff_s": 0.05, "on": ["crash"]}}})
    result = orchestrate("run", str(plan), "-j", "1")
    assert result.code == 0, result.out + result.err
    states = {r[0] for r in ledger(tmp_path).execute("select state from tasks")}
    assert states == {"COMPLETED"}
    restarts = [p["restarts"] for kind, p in events(tmp_path, "ACTOR_RESTARTED") if p["actor"] == "executor:flaky"]
    assert len(restarts) >= 3 and restarts == sorted(restarts)
    crashed = ledger(tmp_path).execute("select count(*) from step_attempts where error_class = 'crash'").fetchone()[0]
    assert crashed == len(restarts)
    inspected = orchestrate("db", "inspect")
    assert f"executor:flaky={len(restarts)}" in inspected.out


def test_exceeding_the_restart_intensity_stops_the_runtime_with_exit_3(tmp_path, orchestrate):
    write_json(tmp_path / "router_config.json", {"adapters": [
        {"name": "broken", "type": "custom", "class": "tests.fault_adapters:AlwaysRaises",
         "tools": ["shell"], "breaker": {"max_failures": 100}}]})
    plan = write_json(tmp_path / "plan.json", {"workstreams": [
        {"id": "w", "tasks": [{"id": f"t{i}", "tool": "shell", "command": "true"} for i in range(3)]}],
        "defaults": {"retry": {"max_attempts": 20, "backoff_s": 0.01, "on": ["crash"]}}})
    result = orchestrate("run", str(plan), "-j", "1")
    assert result.code == 3, result.out + result.err
    assert "supervision gave up" in result.err and "executor:broken" in result.err
    assert "resume it with `orchestrate execute --run" in result.err
    assert "Traceback" not in result.err
    assert any(p["actor"] == "executor:broken" for _, p in events(tmp_path, "SUPERVISOR_GAVE_UP"))


def run_through_an_outage(tmp_path: Path, plan: Path, sentinel: Path, concurrency: int) -> tuple[int, str, str]:
    """Run ``plan`` in the foreground while the tool is down; end the outage (remove the
    sentinel) once the circuit has opened; return the exit code and output."""
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", str(plan), "-j", str(concurrency)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: events(tmp_path, "CIRCUIT_OPEN"), what="the circuit to open")
        sentinel.unlink()
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, out, err


def test_the_circuit_opens_sends_tasks_to_the_fallback_probes_and_closes(tmp_path, orchestrate):
    sentinel = tmp_path / "tool-is-down"
    sentinel.touch()
    write_json(tmp_path / "router_config.json", {"adapters": [
        {"name": "flaky", "type": "custom", "class": "tests.fault_adapters:SwitchableShell",
         "settings": {"broken_while": str(sentinel)}, "tools": ["shell"], "fallback": "steady",
         "breaker": {"max_failures": 2, "reset_timeout_s": 1.0}},
        {"name": "steady", "type": "shell", "tools": []}]})
    chain = [{"id": f"c{i}", "tool": "shell", "command": "sleep 0.3", **({"depends_on": [f"c{i-1}"]} if i else {})}
             for i in range(12)]
    plan = write_json(tmp_path / "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": "f1", "tool": "shell", "command": "true"}, {"id": "f2", "tool": "shell", "command": "true"}, *chain]}],
        "defaults": {"retry": {"max_attempts": 3, "backoff_s": 0.05}}})
    code, out, err = run_through_an_outage(tmp_path, plan, sentinel, concurrency=3)
    assert code == 0, out + err
    order = [kind for kind, p in events(tmp_path, "CIRCUIT_OPEN", "CIRCUIT_HALF_OPEN", "CIRCUIT_CLOSED")
             if p["adapter"] == "flaky"]
    assert order[:3] == ["CIRCUIT_OPEN", "CIRCUIT_HALF_OPEN", "CIRCUIT_CLOSED"]
    decisions = ledger(tmp_path).execute("select chosen, reason from routing_decisions order by id").fetchall()
    assert any(d["chosen"] == "steady" and "fallback" in d["reason"] for d in decisions)
    assert any(d["chosen"] == "flaky" for d in decisions[-3:]), "after closing, tasks go back to the tool"
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    shown = orchestrate("runs", "show", run_id)
    assert "CIRCUIT_OPEN" in shown.out and "CIRCUIT_CLOSED" in shown.out
    assert "flaky=closed" in orchestrate("db", "inspect").out


def test_without_a_fallback_tasks_wait_for_the_tool_and_complete_when_it_recovers(tmp_path, orchestrate):
    sentinel = tmp_path / "tool-is-down"
    sentinel.touch()
    write_json(tmp_path / "router_config.json", {"adapters": [
        {"name": "flaky", "type": "custom", "class": "tests.fault_adapters:SwitchableShell",
         "settings": {"broken_while": str(sentinel)}, "tools": ["shell"],
         "breaker": {"max_failures": 2, "reset_timeout_s": 0.5}}]})
    plan = write_json(tmp_path / "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": f"t{i}", "tool": "shell", "command": "true"} for i in range(6)]}],
        "defaults": {"retry": {"max_attempts": 4, "backoff_s": 0.05}}})
    code, out, err = run_through_an_outage(tmp_path, plan, sentinel, concurrency=2)
    assert code == 0, out + err
    assert {r[0] for r in ledger(tmp_path).execute("select state from tasks")} == {"COMPLETED"}
    held = ledger(tmp_path).execute("select count(*) from routing_decisions where reason like '%waiting for flaky%'")
    assert held.fetchone()[0] >= 1


def test_failing_user_commands_and_gates_never_open_a_circuit_and_the_run_ends(tmp_path, orchestrate):
    """The 7-task repro: five `exit 1` and two failing gates used to open the shell circuit,
    the probe's gate failure left it half-open forever, and the run hung silently."""
    write_json(tmp_path / "router_config.json", {"adapters": [
        {"name": "shell", "type": "shell", "breaker": {"max_failures": 2, "reset_timeout_s": 600}}]})
    plan = write_json(tmp_path / "plan.json", {"workstreams": [{"id": "w", "tasks": [
        *({"id": f"exit{i}", "tool": "shell", "command": "exit 1"} for i in range(5)),
        *({"id": f"gate{i}", "tool": "shell", "command": "true",
           "acceptance": [{"name": "never", "command": "false"}]} for i in range(2))]}]})
    result = orchestrate("run", str(plan), "-j", "1", timeout=60)
    assert result.code == 1, result.out + result.err
    states = [row[0] for row in ledger(tmp_path).execute("select state from tasks")]
    assert states == ["FAILED"] * 7
    assert events(tmp_path, "CIRCUIT_OPEN") == []
    classes = {row[0] for row in ledger(tmp_path).execute("select error_class from tasks")}
    assert classes == {"command_failed", "gate"}


def test_a_run_whose_tool_stays_down_says_it_waits_then_stops_in_safe_mode_and_resumes(tmp_path, orchestrate):
    sentinel = tmp_path / "tool-is-down"
    sentinel.touch()
    write_json(tmp_path / "router_config.json", {"adapters": [
        {"name": "flaky", "type": "custom", "class": "tests.fault_adapters:SwitchableShell",
         "settings": {"broken_while": str(sentinel)}, "tools": ["shell"],
         "breaker": {"max_failures": 2, "reset_timeout_s": 600}}]})
    plan = write_json(tmp_path / "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": f"t{i}", "tool": "shell", "command": "true", "retry": {"max_attempts": 3, "backoff_s": 0.05}}
        for i in range(4)]}]})
    result = orchestrate("run", str(plan), "-j", "2", "--safe-mode-after", "3", timeout=60)
    assert result.code == 1, result.out + result.err
    assert "waiting: circuit 'flaky' open, next probe in" in result.out
    db = ledger(tmp_path)
    status, reason = db.execute("select status, status_reason from runs").fetchone()
    assert status == "partial" and "safe mode" in reason
    assert {row[0] for row in db.execute("select state from tasks")} <= {"BLOCKED", "FAILED"}
    run_id = db.execute("select run_id from runs").fetchone()[0]
    sentinel.unlink()
    resumed = orchestrate("execute", "--run", run_id, timeout=60)
    assert resumed.code == 0, resumed.out + resumed.err
    assert {row[0] for row in ledger(tmp_path).execute("select state from tasks")} == {"COMPLETED"}


def test_a_task_failing_twice_then_succeeding_has_three_attempts_with_policy_backoff(tmp_path, orchestrate):
    counter = tmp_path / "calls"
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "flaky", "tool": "shell",
         "command": f"n=$(($(cat {counter} 2>/dev/null || echo 0)+1)); echo $n > {counter}; test $n -ge 3",
         "retry": {"max_attempts": 3, "backoff_s": 0.4, "max_backoff_s": 10, "jitter": 0.1}}]})
    result = orchestrate("run", str(plan))
    assert result.code == 0, result.out + result.err
    attempts = ledger(tmp_path).execute(
        "select attempt, status, started_at, completed_at from step_attempts order by attempt").fetchall()
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "FAILED"), (2, "FAILED"), (3, "COMPLETED")]
    gaps = [(parse(attempts[i + 1]["started_at"]) - parse(attempts[i]["completed_at"])).total_seconds() for i in range(2)]
    for gap, base in zip(gaps, (0.4, 0.8)):
        assert base <= gap <= base * 1.1 + 0.5, gaps  # policy delay plus jitter, plus scheduling slack


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_grandchild_that_calls_setsid_does_not_survive_timeout_or_cancel(tmp_path, orchestrate, how):
    pidfile = tmp_path / "escapee.pid"
    command = f"sh -c 'setsid sh -c \"echo \\$\\$ > {pidfile}; exec sleep 100\" &' ; sleep 100"
    task = {"id": "escape", "tool": "shell", "command": command}
    if how == "timeout":
        task["timeout_s"] = 1
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [task]})
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", str(plan)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the escapee to start")
        escapee = psutil.Process(int(pidfile.read_text()))
        assert escapee.ppid() != os.getpid()
        if how == "cancel":
            run_id = wait_until(lambda: ledger(tmp_path).execute("select run_id from runs").fetchone(), what="run")[0]
            cancelled = orchestrate("cancel", run_id, "w/escape")
            assert cancelled.code == 0, cancelled.err
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1
    state = ledger(tmp_path).execute("select state from tasks").fetchone()[0]
    assert state == ("TIMEOUT" if how == "timeout" else "CANCELLED")
    assert not escapee.is_running() or escapee.status() == psutil.STATUS_ZOMBIE


def test_a_task_over_its_memory_limit_is_killed_and_fails_resource_limit(tmp_path, orchestrate):
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "hog", "tool": "shell", "memory_limit_mb": 60, "timeout_s": 60,
         "command": "python3 -c 'import time; x = bytearray(300 * 1024 * 1024); time.sleep(60)'"}]})
    result = orchestrate("run", str(plan))
    assert result.code == 1
    attempt = ledger(tmp_path).execute("select status, error_class, max_rss_bytes, duration_s from step_attempts").fetchone()
    assert attempt["status"] == "FAILED" and attempt["error_class"] == "resource_limit"
    assert attempt["max_rss_bytes"] > 60 * 1024 * 1024 and attempt["duration_s"] < 30


def test_a_run_failing_with_one_signature_too_often_is_quarantined(tmp_path, orchestrate):
    plan = write_json(tmp_path / "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": f"t{i}", "tool": "shell", "command": "echo 'disk full' >&2; exit 1"} for i in range(8)]}]})
    result = orchestrate("run", str(plan), "-j", "1", "--quarantine-after", "3")
    assert result.code == 1
    run = ledger(tmp_path).execute("select run_id, status, status_reason from runs").fetchone()
    assert run["status"] == "quarantined" and "signature" in run["status_reason"]
    started = ledger(tmp_path).execute("select count(*) from step_attempts").fetchone()[0]
    assert started == 4  # the fourth identical failure exceeded the threshold; nothing more started
    shown = orchestrate("runs", "show", run["run_id"])
    assert "quarantined" in shown.out and "disk full" in shown.out


def test_sigkill_at_random_moments_loses_nothing_and_leaves_no_process(tmp_path, orchestrate, db_url):
    effects = tmp_path / "effects.txt"
    effects.touch()
    # The effect is idempotent per task: an attempt re-run after a crash does not add it twice.
    command = (f"sleep 0.1; flock {effects} sh -c 'grep -qx \"$ORCHESTRATE_TASK\" {effects} "
               f"|| echo \"$ORCHESTRATE_TASK\" >> {effects}'")
    plan = write_json(tmp_path / "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": f"t{i:03d}", "tool": "shell", "command": command} for i in range(200)]}]})
    created = orchestrate("request", "--workstream", str(plan), "--json")
    run_id = created.json()["run_id"]
    rng = random.Random(int(os.environ.get("FAULT_SEED", "20261122")))
    for kill in range(20):
        process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "execute", "--run", run_id, "-j", "4", "-q"],
                                   cwd=tmp_path, env=runtime_env(tmp_path),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Every other kill lands while the ledger shows an attempt of this runtime running, so
        # some attempts are interrupted however slow the machine is; the others at random.
        if kill % 2 == 0:
            wait_until(lambda: process.poll() is not None or attempt_running(tmp_path, db_url), timeout=60,
                       what="an attempt to start")
        try:
            process.wait(timeout=rng.uniform(0.0, 0.3) if kill % 2 == 0 else rng.uniform(0.3, 1.2))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
    final = orchestrate("execute", "--run", run_id, timeout=300)
    assert final.code == 0, final.out + final.err
    db = ledger(tmp_path)
    if not db_url:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert db.execute("select status from runs").fetchone()[0] == "completed"
    assert {r[0] for r in db.execute("select state from tasks")} == {"COMPLETED"}
    lines = effects.read_text().split()
    assert sorted(lines) == sorted(f"w/t{i:03d}" for i in range(200)), "every effect exactly once"
    interrupted = db.execute("select count(*) from step_attempts where error_class = 'interrupted'").fetchone()[0]
    assert interrupted > 0, "the kills should have interrupted some attempts"
    assert marked(run_id) == []
