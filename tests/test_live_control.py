"""A live runtime steered over its real control socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from control.client import ControlClient
from control.protocol import ControlError
from persistence.clock import utc_now_iso
from tests.conftest import ORCHESTRATE, ledger, parse, runtime_env, wait_until

# Every control test runs once against SQLite and once against PostgreSQL.
pytestmark = pytest.mark.usefixtures("db_url")


def write_json(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ORCHESTRATE), *args], cwd=tmp_path, env=runtime_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_listening(tmp_path: Path) -> Path:
    """The runtime's socket path, once a ping is answered there."""
    path = tmp_path / ".state" / "orchestrate.sock"
    wait_until(lambda: _answers(path), what="the runtime to listen")
    return path


def client(tmp_path: Path) -> ControlClient:
    return ControlClient(wait_listening(tmp_path))


def _answers(path: Path) -> bool:
    try:
        with ControlClient(path, timeout_s=2) as probe:
            return bool(probe.request("ping"))
    except (OSError, ControlError):
        return False


def task_state(control: ControlClient, run_id: str, key: str) -> str:
    return control.request("status", {"run": run_id})["runs"][0]["tasks"][key]


def active_run(control: ControlClient) -> str:
    return wait_until(lambda: (control.request("status")["runs"] or [{}])[0].get("run_id"), what="a run")


def stop(process: subprocess.Popen) -> tuple[str, str]:
    try:
        return process.communicate(timeout=60)
    finally:
        process.kill()


def test_a_foreground_run_is_steered_retry_unblocks_and_approval_finishes_it(tmp_path):
    flag = tmp_path / "fixed"
    plan = write_json(tmp_path / "plan.json", {"workstreams": [
        {"id": "build", "tasks": [
            {"id": "compile", "tool": "shell", "command": f"test -f {flag}"},
            {"id": "package", "tool": "shell", "command": "true", "depends_on": ["compile"]}]},
        {"id": "release", "tasks": [
            {"id": "sign-off", "tool": "human", "prompt": "Release it?"},
            {"id": "publish", "tool": "shell", "command": "true", "depends_on": ["sign-off"]}]}]})
    process = start(tmp_path, "run", str(plan))
    try:
        with client(tmp_path) as control:
            run_id = active_run(control)
            wait_until(lambda: task_state(control, run_id, "build/package") == "BLOCKED", what="package blocked")
            assert task_state(control, run_id, "release/sign-off") == "AWAITING_APPROVAL"
            flag.touch()
            assert control.request("retry", {"run": run_id, "task": "build/compile"})["retried"] == [
                "build/compile", "build/package"]
            wait_until(lambda: task_state(control, run_id, "build/package") == "COMPLETED", what="package done")
            decision = control.request("approve", {"run": run_id, "task": "release/sign-off", "comment": "ship"})
            assert decision["approved"] is True
    finally:
        out, err = stop(process)
    assert process.returncode == 0, out + err
    assert "AWAITING_APPROVAL" in out or "? release/sign-off" in out
    db = ledger(tmp_path)
    approved = db.execute("select payload_json from events where event_type = 'TASK_APPROVED'").fetchone()
    payload = json.loads(approved[0])
    assert payload["comment"] == "ship" and payload["who"] and payload["at"]
    attempts = [r[0] for r in db.execute("select status from step_attempts where step_name = 'build/compile' order by attempt")]
    assert attempts == ["FAILED", "COMPLETED"]


def test_a_rejected_human_step_fails_and_blocks_its_dependants(tmp_path):
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "gate", "tool": "human", "prompt": "Go?"},
        {"id": "after", "tool": "shell", "command": "true", "depends_on": ["gate"]}]})
    process = start(tmp_path, "run", str(plan))
    try:
        with client(tmp_path) as control:
            run_id = active_run(control)
            wait_until(lambda: task_state(control, run_id, "w/gate") == "AWAITING_APPROVAL", what="approval wait")
            control.request("reject", {"run": run_id, "task": "w/gate", "comment": "not today"})
    finally:
        out, err = stop(process)
    assert process.returncode == 1
    states = dict(ledger(tmp_path).execute("select task_key, state from tasks").fetchall())
    assert states == {"w/gate": "FAILED", "w/after": "BLOCKED"}
    assert "rejected by" in out and "not today" in out


def test_pause_stops_new_starts_and_resume_continues(tmp_path):
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "first", "tool": "shell", "command": "sleep 1"},
        *[{"id": f"next{i}", "tool": "shell", "command": "true", "depends_on": ["first"]} for i in range(3)]]})
    process = start(tmp_path, "run", str(plan))
    try:
        with client(tmp_path) as control:
            run_id = active_run(control)
            wait_until(lambda: task_state(control, run_id, "w/first") == "IN_PROGRESS", what="first started")
            control.request("pause", {"run": run_id})
            paused_at = utc_now_iso()
            wait_until(lambda: task_state(control, run_id, "w/first") == "COMPLETED", what="first done")
            snapshot = control.request("status", {"run": run_id})["runs"][0]
            assert snapshot["paused"] and all(snapshot["tasks"][f"w/next{i}"] == "QUEUED" for i in range(3))
            resumed_at = utc_now_iso()
            control.request("resume", {"run": run_id})
    finally:
        out, err = stop(process)
    assert process.returncode == 0, out + err
    starts = [parse(r[0]) for r in ledger(tmp_path).execute(
        "select started_at from step_attempts where step_name != 'w/first'")]
    assert len(starts) == 3
    assert all(start >= parse(resumed_at) for start in starts), (paused_at, resumed_at, starts)


def test_cancel_kills_a_running_process_tree_and_blocks_dependants(tmp_path):
    marker = f"orchestrate-test-{uuid.uuid4().hex}"
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "sleepy", "tool": "shell", "command": "sh -c 'sleep 100 & sleep 100'", "env": {"TREE": marker}},
        {"id": "after", "tool": "shell", "command": "true", "depends_on": ["sleepy"]}]})
    process = start(tmp_path, "run", str(plan))
    try:
        with client(tmp_path) as control:
            run_id = active_run(control)
            wait_until(lambda: task_state(control, run_id, "w/sleepy") == "IN_PROGRESS", what="sleepy started")
            wait_until(lambda: len(_marked(marker)) >= 2, what="the tree to start")
            assert control.request("cancel", {"run": run_id, "task": "w/sleepy"})["killing"] == ["w/sleepy"]
    finally:
        out, err = stop(process)
    assert process.returncode == 1
    assert dict(ledger(tmp_path).execute("select task_key, state from tasks").fetchall()) == {
        "w/sleepy": "CANCELLED", "w/after": "BLOCKED"}
    assert _marked(marker) == []


def _marked(marker: str) -> list[int]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get("TREE") == marker:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def test_the_socket_is_owner_only_and_bad_requests_get_errors_while_serving_goes_on(tmp_path):
    process = start(tmp_path, "serve")
    try:
        with client(tmp_path) as control:
            sock_path = tmp_path / ".state" / "orchestrate.sock"
            assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
            assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o700
            replies = []
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                raw.connect(str(sock_path))
                reader = raw.makefile("rb")
                for line in (b"x" * (2 << 20) + b"\n", b"{not json\n",
                             b'{"id": 1, "command": "teleport"}\n',
                             b'{"id": 2, "command": "cancel", "args": {"run": 5}}\n',
                             b'{"id": 3, "command": "ping"}\n'):
                    raw.sendall(line)
                    replies.append(json.loads(reader.readline()))
            codes = [r.get("error", {}).get("code") for r in replies[:4]]
            assert codes == ["line_too_long", "bad_json", "unknown_command", "invalid_request"]
            assert all("Traceback" not in r["error"]["message"] for r in replies[:4])
            assert replies[4]["ok"] is True
            assert control.request("ping")["pong"] is True
            control.request("shutdown", {"timeout_s": 5})
    finally:
        out, err = stop(process)
    assert process.returncode == 0, out + err


def test_a_killed_runtime_leaves_a_stale_socket_that_the_next_serve_replaces(tmp_path):
    first = start(tmp_path, "serve")
    wait_listening(tmp_path)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (tmp_path / ".state" / "orchestrate.sock").exists()
    second = start(tmp_path, "serve")
    try:
        with client(tmp_path) as control:
            assert control.request("ping")["pid"] == second.pid
            third = subprocess.run([sys.executable, str(ORCHESTRATE), "serve"], cwd=tmp_path,
                                   capture_output=True, text=True, timeout=60)
            assert third.returncode == 3
            assert f"pid {second.pid}" in third.stderr and "Traceback" not in third.stderr
            control.request("shutdown", {"timeout_s": 5})
    finally:
        stop(second)
    assert second.returncode == 0


def test_submit_and_watch_through_the_cli(tmp_path, orchestrate):
    process = start(tmp_path, "serve")
    try:
        wait_listening(tmp_path)
        plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]})
        submitted = orchestrate("submit", str(plan), "--json")
        assert submitted.code == 0, submitted.err
        run_id = submitted.json()["run_id"]
        with ControlClient(tmp_path / ".state" / "orchestrate.sock") as control:
            wait_until(lambda: control.request("status", {"run": run_id})["runs"][0].get("status") == "completed",
                       what="the submitted run to complete")
        status = orchestrate("status", run_id)
        assert status.code == 0 and "completed" in status.out
        health = orchestrate("health", "--json")
        assert health.code == 0
        actors = health.json()["actors"]
        assert {"ledger", "router", "scheduler", "executor:shell"} <= set(actors)
        assert all("heartbeat_age_s" in a for a in actors.values())
        refused = orchestrate("approve", run_id, "w/t")
        assert refused.code == 2 and "not active" in refused.err
        orchestrate("shutdown")
    finally:
        stop(process)
    missing = orchestrate("status")
    assert missing.code == 3 and "no orchestrate runtime is listening" in missing.err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_a_client_running_as_another_user_is_refused(tmp_path):
    if not Path("/usr/bin/setpriv").exists():
        pytest.skip("setpriv is not installed")
    process = start(tmp_path, "serve")
    try:
        with client(tmp_path) as control:
            code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); "
                    f"s.connect({str(tmp_path / '.state' / 'orchestrate.sock')!r}); print('connected')")
            other = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                    sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
            assert other.returncode != 0 and "Permission denied" in other.stderr
            control.request("shutdown", {"timeout_s": 5})
    finally:
        stop(process)


def test_watch_streams_a_runs_events_until_it_finishes_and_drain_starts_nothing_new(tmp_path, orchestrate):
    process = start(tmp_path, "serve")
    try:
        with client(tmp_path) as control:
            plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
                {"id": "gate", "tool": "human", "prompt": "Go?"},
                {"id": "after", "tool": "shell", "command": "true", "depends_on": ["gate"]}]})
            run_id = control.request("submit", {"plan": str(plan)})["run_id"]
            wait_until(lambda: task_state(control, run_id, "w/gate") == "AWAITING_APPROVAL", what="approval wait")
            watcher = start(tmp_path, "watch", run_id, "--json")
            first = json.loads(watcher.stdout.readline())
            assert first["state"] == "WATCHING" and first["run_id"] == run_id
            control.request("approve", {"run": run_id, "task": "w/gate"})
            out, err = watcher.communicate(timeout=60)
            assert watcher.returncode == 0, err
            events = [json.loads(line) for line in out.splitlines()]
            assert ("w/after", "COMPLETED") in [(e["task"], e["state"]) for e in events]
            assert events[-1]["finished_run_state"] == "completed"
            again = orchestrate("watch", run_id)
            assert again.code == 0 and "finished: completed" in again.out
            drained = control.request("drain")
            assert drained["draining"] is True
            second = write_json(tmp_path / "second.json", {"id": "x", "tasks": [
                {"id": "t", "tool": "shell", "command": "true"}]})
            held = control.request("submit", {"plan": str(second)})["run_id"]
            snapshot = control.request("status", {"run": held})["runs"][0]
            assert snapshot["paused"] and snapshot["counts"].get("COMPLETED", 0) == 0
            control.request("resume")
            wait_until(lambda: control.request("status", {"run": held})["runs"][0]["status"] == "completed",
                       what="the held run to complete after resume")
            control.request("shutdown", {"timeout_s": 5})
    finally:
        stop(process)


def test_shutdown_lets_the_running_task_finish_then_stops_at_once(tmp_path):
    """A graceful shutdown waits for running tasks (woken by their progress, not by a polling
    tick) and then stops; the task finished, not killed."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    process = start(tmp_path, "serve")
    try:
        with client(tmp_path) as control:
            plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
                {"id": "held", "tool": "shell", "command": f"cat {gate} > /dev/null"}]})
            run_id = control.request("submit", {"plan": str(plan)})["run_id"]
            wait_until(lambda: task_state(control, run_id, "w/held") == "IN_PROGRESS", what="the task to start")
            control.request("shutdown", {"timeout_s": 120})
            assert control.request("ping")["pong"] is True  # still waiting for the task
        with open(gate, "w") as release:  # the task reads to end of file: it finishes now
            release.write("go\n")
        out, err = process.communicate(timeout=60)
    finally:
        stop(process)
    assert process.returncode == 0, out + err
    db = ledger(tmp_path)
    state = db.execute("select state from tasks where run_id = ? and task_key = 'w/held'", (run_id,)).fetchone()
    assert state["state"] == "COMPLETED"
