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
         "command": "python3 -c \"x = b'a' * (300 * 1024 * 1024); import time; time.sleep(120)\""},
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


VALUES = """
import sys

def make(n, size=0):
    return {"n": n, "pad": "x" * size}

def check(u0, u1, u2):
    assert [u0["n"], u1["n"], u2["n"]] == [0, 1, 2], (u0, u1, u2)
    assert u0["pad"] == u1["pad"] == "" and u2["pad"] == "x" * 600_000
    print("inputs verified on", sys.executable, flush=True)
    return {"sum": u0["n"] + u1["n"] + u2["n"], "big": len(u2["pad"])}

def use(counted):
    assert counted == {"words": 42, "big": 600_000}, counted
    return counted["words"] * 2

def make_set():
    return {1, 2}
"""
# A shell task on a node: reads its inputs, writes its own result.
COUNT = ("python3 -c 'import json, os; d = json.load(open(os.environ[\"ORCHESTRATE_INPUTS\"])); "
         "json.dump({\"words\": d[\"one\"][\"n\"] + 41, \"big\": len(d[\"big\"][\"pad\"])}, "
         "open(os.environ[\"ORCHESTRATE_OUTPUT\"], \"w\"))'")


def results(directory: Path, run_id: str) -> dict[str, tuple[str | None, str | None]]:
    """Each task's ``(result_json, result_file)`` of its last attempt, from the ledger."""
    import sqlite3

    with sqlite3.connect(f"file:{directory / '.state' / 'orchestration.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT step_name, result_json, result_file FROM step_attempts WHERE run_id = ? "
                          "ORDER BY attempt", (run_id,)).fetchall()
    return {name: (text, path) for name, text, path in rows}


def test_results_travel_as_inputs_to_python_and_shell_tasks_on_both_nodes(cluster, tmp_path):
    write(tmp_path, "router_config.json", router(cluster.address))
    (tmp_path / "values_h17b.py").write_text(VALUES)
    on_a, on_b = {"custom": {"nodeA": 1}}, {"custom": {"nodeB": 1}}
    ups = {"u0": "up0", "u1": "up1", "u2": "up2"}
    plan = write(tmp_path, "plan.json", {"workstreams": [{"id": "w", "tasks": [
        {"id": "up0", "tool": "python", "callable": "values_h17b:make", "args": [0], "resources": on_a},
        {"id": "up1", "tool": "python", "callable": "values_h17b:make", "args": [1], "resources": on_b},
        # 600 KB: kept as a file under .state/results on the runtime's machine, and more than
        # one chunk each way, and more than a command line may carry.
        {"id": "up2", "tool": "python", "callable": "values_h17b:make", "args": [2, 600_000], "resources": on_b},
        {"id": "check-a", "tool": "python", "callable": "values_h17b:check", "resources": on_a,
         "depends_on": list(ups.values()), "inputs": ups},
        {"id": "check-b", "tool": "python", "callable": "values_h17b:check", "resources": on_b,
         "depends_on": list(ups.values()), "inputs": ups},
        {"id": "count", "tool": "shell", "command": COUNT, "resources": on_a,
         "depends_on": ["up1", "up2"], "inputs": {"one": "up1", "big": "up2"}},
        {"id": "use", "tool": "python", "callable": "values_h17b:use", "resources": on_b,
         "depends_on": ["count"], "inputs": {"counted": "count"}},
        {"id": "bad-py", "tool": "python", "callable": "values_h17b:make_set", "resources": on_a},
        {"id": "bad-sh", "tool": "shell", "command": "echo '{not json' > \"$ORCHESTRATE_OUTPUT\"", "resources": on_b},
        {"id": "after-bad", "tool": "shell", "command": "true", "depends_on": ["bad-py"], "inputs": {"v": "bad-py"}},
    ]}]})

    result = run(tmp_path, "run", str(plan))

    assert result.returncode == 1, result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    tasks = shown(tmp_path, run_id)
    assert {key: task["state"] for key, task in tasks.items()} == {
        "w/up0": "COMPLETED", "w/up1": "COMPLETED", "w/up2": "COMPLETED", "w/check-a": "COMPLETED",
        "w/check-b": "COMPLETED", "w/count": "COMPLETED", "w/use": "COMPLETED", "w/bad-py": "FAILED",
        "w/bad-sh": "FAILED", "w/after-bad": "BLOCKED"}
    attempts = {key: task["attempt_history"][-1] for key, task in tasks.items() if task["attempt_history"]}
    nodes = {key: NODE.search(attempt["message"]).group(1) for key, attempt in attempts.items()}
    assert nodes["w/check-a"] == nodes["w/count"] != nodes["w/check-b"] == nodes["w/use"]
    assert all(attempt["adapter"] == "cluster" for attempt in attempts.values())

    kept = results(tmp_path, run_id)
    text, path = kept["w/up2"]
    assert text is None and path.startswith(str(tmp_path / ".state" / "results" / run_id))
    assert json.loads(Path(path).read_text()) == {"n": 2, "pad": "x" * 600_000}
    for checker in ("w/check-a", "w/check-b"):  # each verified its three inputs on its node
        assert json.loads(kept[checker][0]) == {"sum": 3, "big": 600_000}
    logs = tmp_path / ".state" / "logs" / run_id / "w"
    assert "inputs verified on" in (logs / "check-b.log").read_text()
    assert json.loads(kept["w/count"][0]) == {"words": 42, "big": 600_000}
    assert kept["w/use"][0] == "84"

    assert re.match(r"exit code 1: the result of values_h17b:make_set is not JSON: it returned a set .*; on ray node ",
                    attempts["w/bad-py"]["message"]), attempts["w/bad-py"]["message"]
    assert attempts["w/bad-sh"]["message"].startswith(
        "task w/bad-sh: what it wrote to $ORCHESTRATE_OUTPUT is not JSON"), attempts["w/bad-sh"]["message"]
    assert kept["w/bad-py"] == kept["w/bad-sh"] == (None, None)


WHEEL_BY_HAND = """
import base64, hashlib, os, zipfile

NAME, VERSION = "onlyhere_h17b", "0.1"
DIST = f"{NAME}-{VERSION}"


def _line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open(f"{NAME}/__init__.py", "rb") as source:
        files = {f"{NAME}/__init__.py": source.read(),
                 f"{DIST}.dist-info/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n".encode(),
                 f"{DIST}.dist-info/WHEEL": b"Wheel-Version: 1.0\\nGenerator: by-hand\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    record = "".join(_line(p, d) + "\\n" for p, d in files.items()) + f"{DIST}.dist-info/RECORD,,\\n"
    name = f"{DIST}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
        wheel.writestr(f"{DIST}.dist-info/RECORD", record)
    return name
"""


def venv_with_a_package(directory: Path) -> Path:
    """A virtualenv holding ``onlyhere_h17b``, a package orchestrate's own interpreter lacks:
    ``python -m venv``, then pip (offline: the package's build backend is in its directory and
    needs nothing) installs it from a directory written here."""
    package = directory / "onlyhere"
    (package / "onlyhere_h17b").mkdir(parents=True)
    (package / "onlyhere_h17b" / "__init__.py").write_text("WHERE = __file__\n")
    (package / "wheel_by_hand.py").write_text(WHEEL_BY_HAND)
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "wheel_by_hand"\nbackend-path = ["."]\n')
    venv = directory / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--disable-pip-version-check", "--no-deps", "--no-index", str(package)],
                   check=True, timeout=300, capture_output=True)
    return venv


def test_python_tasks_on_ray_run_with_the_tasks_interpreter_and_one_missing_on_the_node_is_named(cluster, tmp_path):
    venv = venv_with_a_package(tmp_path)
    assert importlib.util.find_spec("onlyhere_h17b") is None, "the package must not be beside orchestrate"
    gone = tmp_path / "gone-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(gone)], check=True, timeout=120)
    write(tmp_path, "router_config.json", router(cluster.address))
    (tmp_path / "probe_h17b.py").write_text(
        "import sys\n\ndef where():\n    import onlyhere_h17b\n"
        "    return {'python': sys.executable, 'module': onlyhere_h17b.WHERE}\n")
    on_a, on_b = {"custom": {"nodeA": 1}}, {"custom": {"nodeB": 1}}
    # The workstream names the interpreter (a virtualenv directory, relative to the plan).
    plan = write(tmp_path, "plan.json", {"workstreams": [{"id": "w", "python": "venv", "tasks": [
        {"id": "where-a", "tool": "python", "callable": "probe_h17b:where", "resources": on_a},
        {"id": "where-b", "tool": "python", "callable": "probe_h17b:where", "resources": on_b},
        # Its virtualenv's bin is first on a shell task's PATH too, as if activated.
        {"id": "shell", "tool": "shell", "resources": on_b,
         "command": "python -c 'import onlyhere_h17b, sys; print(sys.executable)'"},
        # Present when the plan is read, gone from the node when the task runs there.
        {"id": "remove", "tool": "shell", "command": f"rm -r {gone}", "resources": on_a},
        {"id": "orphan", "tool": "python", "callable": "probe_h17b:where", "python": "gone-venv",
         "depends_on": ["remove"], "resources": on_a},
    ]}]})

    result = run(tmp_path, "run", str(plan))

    assert result.returncode == 1, result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    tasks = shown(tmp_path, run_id)
    assert {key: task["state"] for key, task in tasks.items()} == {
        "w/where-a": "COMPLETED", "w/where-b": "COMPLETED", "w/shell": "COMPLETED", "w/remove": "COMPLETED",
        "w/orphan": "FAILED"}
    attempts = {key: task["attempt_history"][-1] for key, task in tasks.items()}
    assert NODE.search(attempts["w/where-a"]["message"]).group(1) != NODE.search(
        attempts["w/where-b"]["message"]).group(1)
    for key in ("w/where-a", "w/where-b"):
        assert attempts[key]["result"] == {
            "python": str(venv / "bin" / "python"),
            "module": str(venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
                          / "onlyhere_h17b" / "__init__.py")}
    logs = tmp_path / ".state" / "logs" / run_id / "w"
    assert (logs / "shell.log").read_text() == f"{venv / 'bin' / 'python'}\n"
    orphan = attempts["w/orphan"]
    assert (orphan["status"], orphan["error_class"]) == ("FAILED", "bad_input"), orphan["message"]
    assert orphan["message"].startswith(
        f"could not start: task w/orphan: its python {gone / 'bin' / 'python'} is not an interpreter on this Ray node; "
        "install it there at that path, or set the task's (workstream's, plan's) \"python\" to one the node has; "
        "on ray node "), orphan["message"]
    assert tasks["w/orphan"]["attempts"] == 1  # the plan's fault: not retried, not the cluster's


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
