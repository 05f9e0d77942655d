"""The audit trail: every state-changing command, accepted or refused, is an audit_log row with
who asked (the socket peer's uid), when, the arguments and the result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from control.client import ControlClient
from control.protocol import ControlError
from tests.conftest import ORCHESTRATE, ledger, wait_until

_AS_NOBODY = """
import json, socket, sys
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    try:
        s.sendall(json.dumps({"id": 1, "command": "pause", "args": {}}).encode() + b"\\n")
    except OSError:
        pass  # refused at connect: the server's reason is already waiting to be read
    reply = s.makefile().readline().strip()
    s.close()
print(reply)
"""
STRANGER_CONNECTS = 40


def _audit_rows(tmp_path: Path) -> list[dict]:
    return [dict(row) for row in ledger(tmp_path).execute("select * from audit_log order by id")]


def _state(control: ControlClient, run_id: str, key: str) -> str:
    return control.request("status", {"run": run_id})["runs"][0]["tasks"][key]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run a client as another user")
def test_pause_cancel_retry_and_approve_are_audited_with_the_peers_uid_and_a_strangers_refusal_too(
        tmp_path, orchestrate):
    # A short socket path outside pytest's 0700 tmp tree, so `nobody` can be let near it.
    socket_dir = Path(tempfile.mkdtemp(prefix="audit-", dir="/tmp"))
    socket_path = socket_dir / "ctl.sock"
    flag = tmp_path / "fixed"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "w", "tasks": [
        {"id": "flaky", "tool": "shell", "command": f"test -f {flag}"},
        {"id": "gate", "tool": "human", "prompt": "Ship?"},
        {"id": "slow", "tool": "shell", "command": "sleep 60"}]}))
    runtime = subprocess.Popen([sys.executable, str(ORCHESTRATE), "serve", "--socket", str(socket_path)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(socket_path.exists, what="the control socket")
        with ControlClient(socket_path, timeout_s=30) as control:
            run_id = control.request("submit", {"plan": str(plan)})["run_id"]
            wait_until(lambda: _state(control, run_id, "w/flaky") == "FAILED", what="flaky failed")
            wait_until(lambda: _state(control, run_id, "w/gate") == "AWAITING_APPROVAL", what="approval wait")
            control.request("pause", {"run": run_id})
            control.request("resume", {"run": run_id})
            flag.touch()
            control.request("retry", {"run": run_id, "task": "w/flaky"})
            with pytest.raises(ControlError):
                control.request("approve", {"run": run_id, "task": "w/slow"})  # not waiting: refused
            control.request("approve", {"run": run_id, "task": "w/gate", "comment": "go"})
            wait_until(lambda: _state(control, run_id, "w/flaky") == "COMPLETED", what="flaky retried")
            control.request("cancel", {"run": run_id})

            os.chmod(socket_dir, 0o711)
            os.chmod(socket_path, 0o666)
            stranger = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                       sys.executable, "-I", "-c", _AS_NOBODY, str(socket_path),
                                       str(STRANGER_CONNECTS)],
                                      capture_output=True, text=True, timeout=60, check=False)
            assert stranger.returncode == 0, stranger.stderr
            assert json.loads(stranger.stdout)["error"]["code"] == "permission_denied"
            control.request("shutdown", {"timeout_s": 5})
        runtime.communicate(timeout=60)
    finally:
        runtime.kill()
        shutil.rmtree(socket_dir, ignore_errors=True)

    rows = _audit_rows(tmp_path)
    me = os.getuid()
    by_command = [(r["command"], r["uid"], r["via"], r["accepted"]) for r in rows]
    for command in ("submit", "pause", "resume", "retry", "approve", "cancel", "shutdown"):
        assert (command, me, "socket", 1) in by_command, (command, by_command)
    assert ("approve", me, "socket", 0) in by_command  # the refused approve counts too
    refused = [r for r in rows if r["command"] == "connect"]
    # Recorded, but not once per connection: a stranger looping on the socket cannot flood the ledger.
    assert 1 <= len(refused) < STRANGER_CONNECTS
    assert {(r["uid"], r["user"], r["accepted"]) for r in refused} == {(65534, "nobody", 0)}
    assert "permission_denied" in refused[0]["message"]

    approve = next(r for r in rows if r["command"] == "approve" and r["accepted"])
    assert json.loads(approve["args_json"]) == {"run": run_id, "task": "w/gate", "comment": "go"}
    assert approve["run_id"] == run_id and approve["at"].endswith("Z")
    retried = next(r for r in rows if r["command"] == "retry")
    assert json.loads(retried["message"]) == {"retried": ["w/flaky"]}

    shown = orchestrate("runs", "show", run_id)
    assert shown.code == 0, shown.err
    trail = shown.out[shown.out.index("COMMAND"):]
    for command in ("submit", "pause", "resume", "retry w/flaky", "approve w/gate comment=go", "cancel"):
        assert command in trail
    assert "REFUSED: task w/slow is not awaiting approval" in trail
    as_json = orchestrate("runs", "show", run_id, "--json").json()
    assert [a["command"] for a in as_json["audit"]][:3] == ["submit", "pause", "resume"]


def test_a_run_the_cli_creates_itself_is_audited_as_the_processes_own_uid(tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "w", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]})
    ran = orchestrate("run", str(plan))
    assert ran.code == 0, ran.err
    requested = orchestrate("request", "--workstream", str(plan), "--run-id", "run-named")
    duplicate = orchestrate("request", "--workstream", str(plan), "--run-id", "run-named", "--new")
    assert requested.code == 0 and duplicate.code == 2
    rows = _audit_rows(tmp_path)
    assert [(r["command"], r["via"], r["uid"], r["accepted"]) for r in rows] == [
        ("run", "cli", os.getuid(), 1), ("request", "cli", os.getuid(), 1), ("request", "cli", os.getuid(), 0)]
    assert json.loads(rows[0]["args_json"])["plan"] == str(plan)
    assert "already exists" in rows[2]["message"] or "run-named" in rows[2]["message"]


def test_an_audit_record_needs_no_known_run_and_survives_a_spill(tmp_path):
    from actors.control import audit_record, this_process
    from persistence.db import make_engine
    from persistence.migrate import init_db
    from persistence.reader import StateReader
    from persistence.spill import read_spill, write_spill
    from persistence.store import Store

    refused = audit_record(this_process(), "cancel", {"run": "run-nope"}, "run-nope", False, "no run 'run-nope'")
    spill = tmp_path / "pending.jsonl"
    write_spill(spill, [refused])
    assert read_spill(spill) == [refused]
    url = f"sqlite:///{tmp_path}/ledger.db"
    init_db(url)
    engine = make_engine(url)
    with Store(engine) as store:
        assert store.apply(read_spill(spill)) == []
    [row] = StateReader(engine).get_audit("run-nope")
    engine.dispose()
    assert (row["uid"], row["via"], row["command"], row["accepted"]) == (os.getuid(), "cli", "cancel", False)
    assert row["args"] == {"run": "run-nope"} and row["message"] == "no run 'run-nope'"
