"""The ``ray`` adapter against a real two-node Ray cluster started by these tests.

One cluster for the module (head with resource ``nodeA``, a second node with ``nodeB``, see
tests/ray_cluster.py); the tests that kill a node and stop the cluster come last. Every run is
the real ``orchestrate`` command line; what is checked is read back from its ledger and from
the processes on this machine (both nodes run here, so a task's pids can be looked up).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import ORCHESTRATE, wait_until
from tests.ray_cluster import RayCluster, free_port

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="ray is not installed: pip install -e '.[ray]' (make test installs it)"),
    pytest.mark.timeout(300),
]

NODE = re.compile(r"on ray node ([0-9a-f]{16,})")
RUN_ID = re.compile(r"run (run-[0-9a-f]+)")


@pytest.fixture(scope="module")
def cluster():
    started = RayCluster()
    try:
        yield started.start()
    finally:
        left = started.stop()
        assert not left, f"processes of the Ray cluster outlived it: {left}"


def router(address: str, *, max_failures: int = 5, fallback: bool = True) -> dict:
    ray = {"name": "cluster", "type": "ray", "breaker": {"max_failures": max_failures, "reset_timeout_s": 300},
           "settings": {"address": address, "resources": {"num_cpus": 0.25}}}
    if fallback:
        ray["fallback"] = "local"
    return {"adapters": [ray, {"name": "local", "type": "shell", "tools": []}]}


def write(directory: Path, name: str, document: dict) -> Path:
    path = directory / name
    path.write_text(json.dumps(document, indent=2))
    return path


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")}


def run(directory: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ORCHESTRATE), *args], check=False, cwd=directory, capture_output=True,
                          text=True, timeout=timeout, env=environment())


def start(directory: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ORCHESTRATE), *args], cwd=directory, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment())


def shown(directory: Path, run_id: str) -> dict[str, dict]:
    """``runs show --json``'s tasks by key."""
    result = run(directory, "runs", "show", run_id, "--json")
    assert result.returncode == 0, result.stderr
    return {task["task_key"]: task for task in json.loads(result.stdout)["tasks"]}


def run_id_of(output: str) -> str:
    found = RUN_ID.search(output)
    assert found, output
    return found.group(1)


def pid_in(path: Path) -> int:
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), timeout=120, what=f"{path.name}"))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def events(directory: Path, run_id: str, kind: str) -> list[str]:
    import sqlite3

    with sqlite3.connect(f"file:{directory / '.state' / 'orchestration.db'}?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute(
            "SELECT payload_json FROM events WHERE run_id = ? AND event_type = ?", (run_id, kind))]


def test_a_mixed_plan_runs_on_both_nodes_with_output_results_and_nodes_in_the_ledger(cluster, tmp_path):
    write(tmp_path, "router_config.json", router(cluster.address))
    (tmp_path / "mathy.py").write_text("def add(a, b):\n    print('adding', a, b)\n    return a + b\n")
    on_a, on_b = {"custom": {"nodeA": 1}}, {"custom": {"nodeB": 1}}
    plan = write(tmp_path, "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": "shell-a", "tool": "shell", "command": "echo hello from $ORCHESTRATE_TASK", "resources": on_a},
        {"id": "shell-b", "tool": "shell", "command": "echo hello from $ORCHESTRATE_TASK", "resources": on_b},
        {"id": "py-a", "tool": "python", "callable": "mathy:add", "args": [2, 3], "resources": on_a},
        {"id": "py-b", "tool": "python", "callable": "mathy:add", "args": [20, 3], "resources": on_b},
        # 20 MB of output comes back into the task's log, in order and complete.
        {"id": "loud", "tool": "shell", "command": "seq 1 2500000", "resources": on_b},
        {"id": "missing", "tool": "python", "callable": "no_such_module_h14b:run", "resources": on_a},
        {"id": "fails", "tool": "shell", "command": "echo broken >&2; exit 3", "resources": on_b},
        # Past its memory limit on the node, its tree is killed there.
        {"id": "hog", "tool": "shell", "memory_limit_mb": 100, "resources": on_a,
         "command": "python -c \"x = b'a' * (300 * 1024 * 1024); import time; time.sleep(120)\""},
    ]}]})

    result = run(tmp_path, "run", str(plan))

    assert result.returncode == 1, result.stdout + result.stderr
    tasks = shown(tmp_path, run_id_of(result.stdout))
    states = {key: task["state"] for key, task in tasks.items()}
    assert states == {"w/shell-a": "COMPLETED", "w/shell-b": "COMPLETED", "w/py-a": "COMPLETED",
                      "w/py-b": "COMPLETED", "w/loud": "COMPLETED", "w/missing": "FAILED", "w/fails": "FAILED",
                      "w/hog": "FAILED"}
    attempts = {key: task["attempt_history"][-1] for key, task in tasks.items()}
    nodes = {key: NODE.search(attempt["message"]).group(1) for key, attempt in attempts.items()}
    assert nodes["w/shell-a"] == nodes["w/py-a"] == nodes["w/missing"] == nodes["w/hog"]
    assert nodes["w/shell-b"] == nodes["w/py-b"] == nodes["w/loud"] == nodes["w/fails"]
    assert nodes["w/shell-a"] != nodes["w/shell-b"], "tasks pinned to two nodes ran on one"
    assert all(attempt["adapter"] == "cluster" for attempt in attempts.values())

    logs = tmp_path / ".state" / "logs" / run_id_of(result.stdout) / "w"
    assert (logs / "shell-b.log").read_text() == "hello from w/shell-b\n"
    assert (logs / "py-b.log").read_text() == "adding 20 3\nresult: 23\n"
    assert attempts["w/py-a"]["result"] == 5
    assert attempts["w/py-b"]["result"] == 23
    loud = (logs / "loud.log").read_bytes()
    assert loud == subprocess.run(["seq", "1", "2500000"], capture_output=True, check=True).stdout
    assert attempts["w/missing"]["error_class"] == "command_failed"
    assert "ModuleNotFoundError: No module named 'no_such_module_h14b'" in attempts["w/missing"]["message"]
    assert attempts["w/fails"]["exit_code"] == 3
    assert attempts["w/fails"]["message"].startswith("exit code 3: broken")
    assert attempts["w/hog"]["error_class"] == "resource_limit"
    assert attempts["w/hog"]["message"].startswith("memory limit exceeded")


def test_a_timed_out_and_a_cancelled_task_leave_no_process_on_their_node(cluster, tmp_path):
    write(tmp_path, "router_config.json", router(cluster.address))
    # Each starts a grandchild in a session of its own whose parent exits at once (an orphan
    # that escapes the task's process group), then waits.
    escape = "echo $$ > {0}.pid; (setsid sleep 300 & echo $! > {0}.escaped.pid); sleep 300"
    plan = write(tmp_path, "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": "slow", "tool": "shell", "command": escape.format("slow"), "timeout_s": 4,
         "resources": {"custom": {"nodeB": 1}}},
        {"id": "doomed", "tool": "shell", "command": escape.format("doomed"), "resources": {"custom": {"nodeA": 1}}},
    ]}]})
    runtime = start(tmp_path, "run", str(plan))
    try:
        run_id = run_id_of(runtime.stdout.readline())
        doomed = [pid_in(tmp_path / "doomed.pid"), pid_in(tmp_path / "doomed.escaped.pid")]
        slow = [pid_in(tmp_path / "slow.pid"), pid_in(tmp_path / "slow.escaped.pid")]
        cancelled = run(tmp_path, "cancel", run_id, "w/doomed")
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        out, err = runtime.communicate(timeout=240)
    finally:
        if runtime.poll() is None:
            runtime.kill()
    assert runtime.returncode == 1, out + err
    tasks = shown(tmp_path, run_id)
    assert tasks["w/slow"]["state"] == "TIMEOUT"
    assert re.match(r"timed out after [0-9.]+s \(process tree killed\); on ray node ",
                    tasks["w/slow"]["attempt_history"][-1]["message"])
    assert tasks["w/doomed"]["state"] == "CANCELLED"
    # The timed-out tree was killed before its timeout was reported; a cancel kills the worker
    # and the tree's keeper follows it within moments.
    assert all(gone(pid) for pid in slow), [psutil.Process(p).cmdline() for p in slow if not gone(p)]
    wait_until(lambda: all(gone(pid) for pid in doomed), timeout=30, what="the cancelled task's processes to end")


def test_a_runtime_killed_mid_run_resumes_without_running_a_completed_ray_task_again(cluster, tmp_path):
    write(tmp_path, "router_config.json", router(cluster.address))
    plan = write(tmp_path, "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": "first", "tool": "shell", "command": "echo ran >> first.runs"},
        {"id": "second", "tool": "shell", "depends_on": ["first"],
         "command": "test -f second.started && exit 0; touch second.started; echo $$ > second.pid; sleep 300"},
    ]}]})
    runtime = start(tmp_path, "run", str(plan))
    try:
        run_id = run_id_of(runtime.stdout.readline())
        sleeper = pid_in(tmp_path / "second.pid")
    finally:
        runtime.send_signal(signal.SIGKILL)
        runtime.communicate(timeout=60)
    # Its Ray driver died with it; Ray stops the dead driver's tasks, the keeper kills the tree.
    wait_until(lambda: gone(sleeper), timeout=60, what="the killed runtime's Ray task to end")

    resumed = run(tmp_path, "execute", "--run", run_id)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (tmp_path / "first.runs").read_text() == "ran\n"
    tasks = shown(tmp_path, run_id)
    assert tasks["w/first"]["attempts"] == 1
    assert tasks["w/second"]["state"] == "COMPLETED"


def test_sigterm_stops_ray_tasks_records_them_interrupted_and_the_run_resumes(cluster, tmp_path):
    write(tmp_path, "router_config.json", router(cluster.address))
    plan = write(tmp_path, "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": "long", "tool": "shell", "resources": {"custom": {"nodeB": 1}},
         "command": "test -f long.started && exit 0; touch long.started; echo $$ > long.pid; sleep 300"},
    ]}]})
    runtime = start(tmp_path, "run", str(plan))
    try:
        run_id = run_id_of(runtime.stdout.readline())
        sleeper = pid_in(tmp_path / "long.pid")
        runtime.send_signal(signal.SIGTERM)
        out, err = runtime.communicate(timeout=120)
    finally:
        if runtime.poll() is None:
            runtime.kill()
    assert runtime.returncode == 143, out + err
    assert f"resume with: orchestrate execute --run {run_id}" in err + out
    wait_until(lambda: gone(sleeper), timeout=30, what="the interrupted Ray task's processes to end")
    attempt = shown(tmp_path, run_id)["w/long"]["attempt_history"][-1]
    assert (attempt["status"], attempt["error_class"]) == ("FAILED", "interrupted")

    resumed = run(tmp_path, "execute", "--run", run_id)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert shown(tmp_path, run_id)["w/long"]["state"] == "COMPLETED"


def test_a_cluster_that_is_down_at_start_opens_the_circuit_and_tasks_fall_back(tmp_path):
    write(tmp_path, "router_config.json", router(f"127.0.0.1:{free_port()}", max_failures=1))
    plan = write(tmp_path, "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": f"t{n}", "tool": "shell", "command": "echo done here", "max_attempts": 2} for n in range(3)
    ]}]})

    result = run(tmp_path, "run", str(plan))

    assert result.returncode == 0, result.stdout + result.stderr
    tasks = shown(tmp_path, run_id_of(result.stdout))
    assert all(task["state"] == "COMPLETED" for task in tasks.values())
    assert {task["attempt_history"][-1]["adapter"] for task in tasks.values()} == {"local"}
    lost = [a for task in tasks.values() for a in task["attempt_history"] if a["adapter"] == "cluster"]
    assert lost and all(a["error_class"] == "tool_error" for a in lost)
    assert "is unreachable: cannot connect to 127.0.0.1" in lost[0]["message"]
    assert events(tmp_path, run_id_of(result.stdout), "CIRCUIT_OPEN")


def test_a_node_killed_mid_task_is_a_tool_failure_and_the_task_falls_back(cluster, tmp_path):
    write(tmp_path, "router_config.json", router(cluster.address, max_failures=1))
    plan = write(tmp_path, "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": "on-b", "tool": "shell", "max_attempts": 2, "resources": {"custom": {"nodeB": 1}},
         "command": "test -f on-b.pid && exit 0; echo $$ > on-b.pid; sleep 300"},
    ]}]})
    runtime = start(tmp_path, "run", str(plan))
    try:
        run_id = run_id_of(runtime.stdout.readline())
        sleeper = pid_in(tmp_path / "on-b.pid")
        cluster.kill_node_b()
        out, err = runtime.communicate(timeout=240)
    finally:
        if runtime.poll() is None:
            runtime.kill()
    assert runtime.returncode == 0, out + err
    attempts = shown(tmp_path, run_id)["w/on-b"]["attempt_history"]
    assert [(a["adapter"], a["status"], a["error_class"]) for a in attempts] == [
        ("cluster", "FAILED", "tool_error"), ("local", "COMPLETED", None)]
    assert attempts[0]["message"].startswith("lost: ")
    assert events(tmp_path, run_id, "CIRCUIT_OPEN")
    wait_until(lambda: gone(sleeper), timeout=30, what="the lost node's task processes to end")


def test_stopping_the_cluster_mid_run_opens_the_circuit_and_the_task_falls_back(cluster, tmp_path):
    write(tmp_path, "router_config.json", router(cluster.address, max_failures=1))
    plan = write(tmp_path, "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": "on-a", "tool": "shell", "max_attempts": 2, "resources": {"custom": {"nodeA": 1}},
         "command": "test -f on-a.pid && exit 0; echo $$ > on-a.pid; sleep 300"},
    ]}]})
    runtime = start(tmp_path, "run", str(plan))
    try:
        run_id = run_id_of(runtime.stdout.readline())
        sleeper = pid_in(tmp_path / "on-a.pid")
        cluster.stop_head()
        out, err = runtime.communicate(timeout=240)
    finally:
        if runtime.poll() is None:
            runtime.kill()
    assert runtime.returncode == 0, out + err
    attempts = shown(tmp_path, run_id)["w/on-a"]["attempt_history"]
    assert [(a["adapter"], a["status"], a["error_class"]) for a in attempts] == [
        ("cluster", "FAILED", "tool_error"), ("local", "COMPLETED", None)]
    assert events(tmp_path, run_id, "CIRCUIT_OPEN")
    wait_until(lambda: gone(sleeper), timeout=30, what="the stopped cluster's task processes to end")
