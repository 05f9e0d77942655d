"""The dashboard's server over HTTP, without a browser: `orchestrate ui` on the ledger and
attached to a live runtime, refusals, and stopping (a real server, real processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import ORCHESTRATE, ledger, wait_until

HUMAN_PLAN = {"workstreams": [{"id": "w", "tasks": [
    {"id": "gate", "tool": "human", "prompt": "Go?"},
    {"id": "after", "tool": "shell", "command": "echo after", "depends_on": ["gate"]}]}]}


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")}


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ORCHESTRATE), *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _dashboard(process: subprocess.Popen) -> tuple[str, str, list[str]]:
    """(base URL, token, lines read) once the process printed its dashboard address."""
    lines = []
    for line in iter(process.stdout.readline, ""):
        lines.append(line)
        found = re.search(r"dashboard at (http://\S+)/#token=(\S+)", line)
        if found:
            return found.group(1), found.group(2), lines
    raise AssertionError("no dashboard address: " + "".join(lines) + process.stderr.read())


def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _post(base: str, body: dict, token: str, origin: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", "X-Orchestrate-Token": token, "Origin": origin or base}
    request = urllib.request.Request(f"{base}/api/command", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _stop(process: subprocess.Popen, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
    if process.poll() is None:
        process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_ui_without_a_runtime_shows_the_ledger_and_refuses_every_change(tmp_path, orchestrate, write_plan):
    plan = write_plan({"workstreams": [{"id": "w", "tasks": [{"id": "ok", "tool": "shell", "command": "echo hi"}]}]})
    assert orchestrate("run", str(plan)).code == 0
    with ledger(tmp_path) as db:
        run_id = db.execute("SELECT run_id FROM runs").fetchone()[0]
    process = _start(tmp_path, "ui", "127.0.0.1:0")
    try:
        base, token, lines = _dashboard(process)
        assert "showing the ledger read-only" in "".join(lines)
        status, page = _get(base + "/")
        assert status == 200 and run_id in page and "ledger (read-only)" in page
        status, page = _get(f"{base}/runs/{run_id}")
        assert status == 200 and 'data-task="w/ok"' in page and 'id="controls"' not in page
        assert _get(f"{base}/runs/{run_id}/log?task=w/ok")[1].endswith("hi")
        assert "Task graph" in _get(f"{base}/runs/{run_id}/report")[1]
        assert _get(f"{base}/runs/run-nope")[0] == 404
        code, reply = _post(base, {"command": "retry", "args": {"run": run_id, "task": "w/ok"}}, token)
        assert code == 409 and "read-only" in reply["error"]["message"]
        code, reply = _post(base, {"command": "shutdown", "args": {}}, token)
        assert code == 400 and reply["error"]["code"] == "unknown_command"
        code, reply = _post(base, {"command": "retry", "args": {"run": run_id}}, token)
        assert code == 400 and "retry requires argument 'task'" in reply["error"]["message"]
        code, reply = _post(base, {"command": "pause", "args": {"run": "x" * (100 << 10)}}, token)
        assert code == 413
        request = urllib.request.Request(f"{base}/api/command", data=b"[1,", headers={
            "X-Orchestrate-Token": token, "Origin": base})
        try:
            urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as error:
            assert error.code == 400
        else:
            raise AssertionError("a body that is not JSON was accepted")
        # A page of another site rebinding its name to this address names its own host.
        assert _get(base + "/", {"Host": "attacker.example:80"})[0] == 421
        started = time.monotonic()
        code, _, err = _stop(process)
    finally:
        process.kill()
    assert code == 128 + signal.SIGTERM and "Traceback" not in err
    assert time.monotonic() - started < 30


def test_ui_attached_to_a_live_runtime_steers_it_through_the_socket(tmp_path, write_plan):
    plan = write_plan(HUMAN_PLAN)
    runtime = _start(tmp_path, "serve")
    ui = None
    try:
        wait_until(lambda: (tmp_path / ".state" / "orchestrate.sock").exists(), 60, what="the runtime's socket")
        submitted = subprocess.run([sys.executable, str(ORCHESTRATE), "submit", str(plan), "--json"], cwd=tmp_path,
                                   env=_env(), capture_output=True, text=True, timeout=60, check=False)
        run_id = json.loads(submitted.stdout)["run_id"]
        ui = _start(tmp_path, "ui", "127.0.0.1:0")
        base, token, lines = _dashboard(ui)
        assert "attached to the runtime" in "".join(lines)

        def awaiting() -> bool:
            snapshot = json.loads(_get(f"{base}/api/runs/{run_id}")[1])
            return snapshot["tasks"].get("w/gate") == "AWAITING_APPROVAL"

        wait_until(awaiting, 60, what="the human step to wait")
        code, reply = _post(base, {"command": "approve", "args": {"run": run_id, "task": "w/gate"}}, token)
        assert (code, reply["ok"]) == (200, True), reply
        code, reply = _post(base, {"command": "approve", "args": {"run": run_id, "task": "w/gate"}}, token)
        assert code == 409 and reply["error"]["code"] == "refused"

        def finished() -> bool:
            with ledger(tmp_path) as db:
                return db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0] == "completed"

        wait_until(finished, 60, what="the run to complete")
        def audited() -> list[tuple] | None:
            # The dashboard was a socket client: audited as one, refusal too. The refusal's row may
            # be committed after the run's end (group commit): wait for it, don't race it.
            with ledger(tmp_path) as db:
                rows = db.execute("SELECT via, accepted FROM audit_log WHERE run_id = ? AND command = 'approve' "
                                  "ORDER BY id", (run_id,)).fetchall()
            return [tuple(row) for row in rows] if len(rows) >= 2 else None

        assert wait_until(audited, 60, what="both approvals in the audit log") == [("socket", 1), ("socket", 0)]
    finally:
        if ui is not None:
            _stop(ui)
        subprocess.run([sys.executable, str(ORCHESTRATE), "shutdown"], cwd=tmp_path, env=_env(), timeout=60,
                       capture_output=True, check=False)
        runtime.communicate(timeout=60)


def test_a_runtime_stopped_by_sigterm_ends_its_dashboard_and_open_streams_at_once(tmp_path, write_plan):
    plan = write_plan(HUMAN_PLAN)
    process = _start(tmp_path, "run", str(plan), "--ui", "127.0.0.1:0")
    try:
        base, token, _ = _dashboard(process)
        run_id = next(found.group(1) for line in iter(process.stdout.readline, "")
                      if (found := re.search(r"run (run-[0-9a-f]+)", line)))
        assert (tmp_path / ".state" / "ui.token").read_text().strip() == token
        # An open event stream must not hold the runtime up.
        stream = urllib.request.urlopen(f"{base}/runs/{run_id}/events", timeout=60)
        first = stream.readline()
        assert first.startswith(b"data: ") and run_id.encode() in first
        reader = threading.Thread(target=stream.read, daemon=True)
        reader.start()
        started = time.monotonic()
        code, _, err = _stop(process)
        elapsed = time.monotonic() - started
        reader.join(30)
    finally:
        process.kill()
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not reader.is_alive(), "the event stream was left open"
    assert elapsed < 30
    with ledger(tmp_path) as db:
        assert db.execute("SELECT status FROM runs").fetchone()[0] == "running"  # resumable, as any SIGTERM


def test_a_dashboard_address_in_use_or_malformed_stops_before_anything_starts(tmp_path, orchestrate, write_plan):
    plan = write_plan(HUMAN_PLAN)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = orchestrate("run", str(plan), "--ui", f"127.0.0.1:{port}")
    assert result.code == 3 and result.err.count("\n") == 1
    assert f"cannot serve the dashboard on 127.0.0.1:{port}: Address already in use" in result.err
    assert not (tmp_path / ".state" / "orchestration.db").exists() or orchestrate("runs").out.startswith("no runs")
    result = orchestrate("run", str(plan), "--ui", "host:port")
    assert result.code == 2 and "expected [HOST:]PORT with a port number" in result.err


def test_report_refuses_an_unknown_run_and_an_unwritable_target_and_writes_nothing_half(tmp_path, orchestrate,
                                                                                         write_plan):
    plan = write_plan({"workstreams": [{"id": "w", "tasks": [{"id": "ok", "tool": "shell", "command": "true"}]}]})
    assert orchestrate("run", str(plan)).code == 0
    with ledger(tmp_path) as db:
        run_id = db.execute("SELECT run_id FROM runs").fetchone()[0]
    result = orchestrate("report", "run-nope")
    assert result.code == 2 and "no run 'run-nope' in the ledger" in result.err
    (tmp_path / "dir").mkdir()
    result = orchestrate("report", run_id, "-o", "dir")
    assert result.code == 2 and "it is a directory" in result.err
    result = orchestrate("report", run_id, "-o", "missing/r.html")
    assert result.code == 2 and "cannot write the report to missing/r.html" in result.err
    result = orchestrate("report", run_id)
    assert result.code == 0 and (tmp_path / f"{run_id}.report.html").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".state"]
    result = orchestrate("report", run_id, "-o", "-")
    assert result.out.startswith("<!DOCTYPE html>") and "w/ok" in result.out


def test_stopping_the_server_ends_its_streams_and_leaves_no_thread(tmp_path, orchestrate, write_plan):
    from persistence.migrate import open_db
    from views.access import Listen
    from views.backends import LedgerBackend
    from views.server import DashboardServer, bind

    plan = write_plan({"workstreams": [{"id": "w", "tasks": [{"id": "ok", "tool": "shell", "command": "true"}]}]})
    assert orchestrate("run", str(plan)).code == 0
    engine, _ = open_db(f"sqlite:///{tmp_path / '.state' / 'orchestration.db'}")
    before = set(threading.enumerate())
    listen = Listen("127.0.0.1", 0)
    server = DashboardServer(LedgerBackend(engine), bind(listen), listen, tmp_path / ".state")
    server.start()
    try:
        with ledger(tmp_path) as db:
            run_id = db.execute("SELECT run_id FROM runs").fetchone()[0]
        assert _get(server.base_url + "/")[0] == 200
        stream = urllib.request.urlopen(f"{server.base_url}/runs/{run_id}/events", timeout=60)
        assert stream.readline().startswith(b"data: ")
    finally:
        server.stop()
        engine.dispose()
    assert stream.read().strip() == b""  # ended by the server, not cut mid-event
    wait_until(lambda: set(threading.enumerate()) <= before, 30, what="the dashboard's threads to end")
    assert not server.alive


def test_the_dashboard_shows_an_allowed_failure_and_a_reused_result_as_such(tmp_path, orchestrate, write_plan):
    (tmp_path / "src.txt").write_text("1\n")
    plan = write_plan({"id": "w", "tasks": [
        {"id": "read", "tool": "shell", "command": "cat src.txt", "files_in": ["src.txt"]},
        {"id": "lint", "tool": "shell", "command": "exit 1", "allow_failure": True}]})
    assert orchestrate("run", str(plan)).code == 0
    again = orchestrate("run", str(plan))
    assert again.code == 0 and "1 completed (1 cached), 1 failed (allowed)" in again.out, again.out
    run_id = again.out.split("orchestrate: run ", 1)[1].split()[0]
    process = _start(tmp_path, "ui", "127.0.0.1:0")
    try:
        base, _, _ = _dashboard(process)
        _, listing = _get(base + "/")
        row = re.search(rf'<tr data-run="{run_id}">.*?</tr>', listing, re.S).group(0)
        assert 'class="badge s-CACHED">CACHED 1<' in row and 'class="badge s-FAILED-allowed">FAILED (allowed) 1<' in row
        _, page = _get(f"{base}/runs/{run_id}")
        assert re.search(r'data-task="w/lint">.*?<span class="badge s-FAILED-allowed">FAILED \(allowed\)</span>', page)
        assert re.search(r'data-task="w/read">.*?<span class="badge s-CACHED">CACHED</span>', page)
        _, snapshot = _get(f"{base}/api/runs/{run_id}")
        shown = json.loads(snapshot)
        assert shown["tasks"]["w/lint"] == "FAILED"  # what the ledger holds, for the buttons (retry)
        assert shown["shown_states"] == {"w/lint": "FAILED (allowed)", "w/read": "CACHED"}
    finally:
        _stop(process)
        process.kill()
