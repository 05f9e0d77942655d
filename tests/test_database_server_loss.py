"""A PostgreSQL server that goes away under a running runtime: the runtime never claims success,
says in one line what happened, keeps what it could not write, and the run resumes once the
server is back. The server here is the test's own (it is crashed on purpose)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    ORCHESTRATE,
    ledger_errors,
    new_postgres_server,
    runtime_env,
    wait_until,
)


@pytest.fixture
def own_server():
    server = new_postgres_server()
    try:
        yield server
    finally:
        server.stop()


def test_a_server_crash_mid_run_stops_the_runtime_with_one_line_and_the_run_resumes(tmp_path: Path, own_server):
    url = own_server.create_database()
    env = runtime_env(tmp_path) | {"ORCHESTRATE_DB_URL": url}
    gate = tmp_path / "go"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workstreams": [{"id": "w", "tasks": [
        {"id": "wait", "tool": "shell", "command": f"while [ ! -e {gate} ]; do sleep 0.05; done"},
        *({"id": f"t{i}", "tool": "shell", "command": "true", "depends_on": ["wait"]} for i in range(5))]}]}))
    runtime = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", str(plan), "--db-stall-limit", "3"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _attempt_running(url), timeout=120, what="the first task to run")
        own_server.crash()
        gate.touch()
        out, err = runtime.communicate(timeout=180)
    finally:
        gate.touch()
        runtime.kill()
    assert runtime.returncode == 3, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "unreachable" in lines[0] and "Check that the server is running" in lines[0]
    assert "resume it with `orchestrate execute --run run-" in lines[0]
    assert "completed in" not in out, "never a claim of success"
    run_id = lines[0].split("execute --run ")[1].split("`")[0]

    own_server.restart()
    resumed = subprocess.run([sys.executable, str(ORCHESTRATE), "execute", "--run", run_id], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=180, check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # What finished while the server was away was kept (spilled) and is committed first: the
    # run may be complete before anything runs again.
    assert f"run {run_id} completed in" in resumed.stdout or f"run {run_id} is already completed" in resumed.stdout
    assert "being driven" not in resumed.stderr, "its own state directory's lease is not waited for"
    shown = json.loads(subprocess.run([sys.executable, str(ORCHESTRATE), "runs", "show", run_id, "--json"],
                                      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                                      check=True).stdout)
    assert {task["state"] for task in shown["tasks"]} == {"COMPLETED"}
    assert [task["attempts"] for task in shown["tasks"] if task["task_key"] == "w/wait"] in ([1], [2])


def _attempt_running(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=5) as db:
            return db.execute("select 1 from step_attempts where status = 'IN_PROGRESS'").fetchone() is not None
    except ledger_errors():
        return False
