"""Several runtimes sharing one ledger, as if on several machines: each has its own state
directory (logs, socket, lock) and all use one database — a PostgreSQL server, or one SQLite
file. Each drives only runs whose lease it holds; `runs` from anywhere shows them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from persistence.db import make_engine, sqlite_url
from persistence.reader import StateReader
from tests.conftest import ORCHESTRATE, Result, wait_until

# Short, so a dead runtime's runs are free soon; long enough that a runtime starting on a
# loaded machine is not mistaken for a dead one.
LEASE_TTL_S = 4


@pytest.fixture
def shared_env(tmp_path: Path, db_url: str | None) -> dict[str, str]:
    """The environment of every runtime of a test: one database for all of them."""
    environment = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")}
    if db_url:
        environment["ORCHESTRATE_DB_URL"] = db_url
    else:
        environment["PIPELINE_DB_PATH"] = str(tmp_path / "shared" / "orchestration.db")
    environment["ORCHESTRATE_LEASE_TTL_S"] = str(LEASE_TTL_S)
    return environment


def machine(tmp_path: Path, name: str) -> Path:
    """A working directory of its own (its state directory inside), as on another machine."""
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    return directory


def start(where: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ORCHESTRATE), *args], cwd=where, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(where: Path, env: dict[str, str], *args: str, timeout: float = 180) -> Result:
    completed = subprocess.run([sys.executable, str(ORCHESTRATE), *args], cwd=where, env=env,
                               capture_output=True, text=True, timeout=timeout, check=False)
    return Result(completed.returncode, completed.stdout, completed.stderr)


def finish(process: subprocess.Popen) -> Result:
    try:
        out, err = process.communicate(timeout=180)
    finally:
        process.kill()
    return Result(process.returncode, out, err)


def gated_plan(path: Path, name: str, gate: Path, tasks: int = 3) -> Path:
    """A plan whose first task waits until ``gate`` exists; the rest follow it."""
    path.write_text(json.dumps({"workstreams": [{"id": name, "tasks": [
        {"id": "wait", "tool": "shell", "command": f"while [ ! -e {gate} ]; do sleep 0.05; done"},
        *({"id": f"t{i}", "tool": "shell", "command": "true", "depends_on": ["wait"]} for i in range(tasks))]}]}))
    return path


def runs_json(where: Path, env: dict[str, str]) -> list[dict]:
    """What `runs --json` shows from ``where`` ([] until the ledger exists)."""
    listed = run_cli(where, env, "runs", "--json")
    return json.loads(listed.out) if listed.code == 0 else []


def driven(runs: list[dict], pid: int) -> list[dict]:
    """Of ``runs`` (as `runs --json` shows them), those driven by the runtime of ``pid``."""
    return [r for r in runs if (r.get("driven_by") or {}).get("owner_pid") == pid]


def request_run(where: Path, env: dict[str, str], plan: Path) -> str:
    created = run_cli(where, env, "request", "--workstream", str(plan), "--json")
    assert created.code == 0, created.out + created.err
    return created.json()["run_id"]


def test_two_runtimes_run_two_plans_at_once_on_one_ledger_and_a_third_shell_sees_both(tmp_path, shared_env):
    gate = tmp_path / "go"
    ana, ben, third = machine(tmp_path, "ana"), machine(tmp_path, "ben"), machine(tmp_path, "third")
    first = start(ana, shared_env, "run", str(gated_plan(ana / "plan.json", "alpha", gate)))
    second = start(ben, shared_env, "run", str(gated_plan(ben / "plan.json", "beta", gate)))
    try:
        # Both driving at once, each its own run, as a third shell sees it.
        def both_driven() -> list[dict] | None:
            runs = runs_json(third, shared_env)
            # A run's lease is taken before its status is committed as running: wait for both.
            return runs if (len(driven(runs, first.pid)) == 1 and len(driven(runs, second.pid)) == 1
                            and {r["status"] for r in runs} == {"running"}) else None

        both = wait_until(both_driven, timeout=120, what="both runtimes to drive their runs")
        assert {r["status"] for r in both} == {"running"} and len(both) == 2
        listed = run_cli(third, shared_env, "runs")
        assert listed.code == 0 and f"pid {first.pid}" in listed.out and f"pid {second.pid}" in listed.out
        for run in both:
            shown = run_cli(third, shared_env, "runs", "show", run["run_id"])
            assert f"driven by: {run['driven_by']['owner_host']} pid {run['driven_by']['owner_pid']}" in shown.out
        inspected = run_cli(third, shared_env, "db", "inspect")
        assert inspected.code == 0 and "runs driven now: " in inspected.out
        assert inspected.out.count(" by ") == 2, inspected.out
        gate.touch()
        done = [finish(first), finish(second)]
    finally:
        gate.touch()
        first.kill()
        second.kill()
    for result in done:
        assert result.code == 0, result.out + result.err
        assert "completed" in result.out
    after = runs_json(third, shared_env)
    assert sorted((r["plan_source"].rsplit("/", 1)[-1], r["status"], r["driven_by"]) for r in after) == [
        ("plan.json", "completed", None), ("plan.json", "completed", None)]
    assert {tuple(r["task_counts"].items()) for r in after} == {(("COMPLETED", 4),)}


def test_a_driven_run_is_refused_and_after_kill_9_taken_over_only_once_the_lease_expired(tmp_path, shared_env):
    gate = tmp_path / "go"
    ana, ben = machine(tmp_path, "ana"), machine(tmp_path, "ben")
    run_id = request_run(ana, shared_env, gated_plan(ana / "plan.json", "alpha", gate))
    driver = start(ana, shared_env, "execute", "--run", run_id)
    try:
        wait_until(lambda: driven(runs_json(ben, shared_env), driver.pid), timeout=120,
                   what="the first runtime to drive the run")

        refused = run_cli(ben, shared_env, "execute", "--run", run_id)
        assert refused.code == 3
        assert refused.err.count("\n") == 1 and refused.out == "", refused.err
        assert f"run {run_id} is being driven by runtime" in refused.err and f"pid {driver.pid}" in refused.err

        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        driver.kill()
    # Dead now: its lease will not move again.
    dead_until = _lease(shared_env, run_id)["expires_at"]
    gate.touch()

    attempts: list[Result] = []

    def take_over() -> Result | None:
        result = run_cli(ben, shared_env, "execute", "--run", run_id)
        attempts.append(result)
        return result if result.code != 3 else None

    taken = wait_until(take_over, timeout=120, interval=0.2, what="the run to be taken over")
    assert taken.code == 0, taken.out + taken.err
    assert f"taking over run {run_id} from runtime" in taken.out and "whose lease expired" in taken.out
    for refusal in attempts[:-1]:
        assert refusal.err.count("\n") == 1 and "is being driven by" in refusal.err, refusal.err
    assert _lease(shared_env, run_id)["acquired_at"] >= dead_until, "taken over only after the dead runtime's lease expired"
    shown = json.loads(run_cli(ben, shared_env, "runs", "show", run_id, "--json").out)
    assert shown["status"] == "completed"
    assert {task["state"] for task in shown["tasks"]} == {"COMPLETED"}


def test_two_executes_of_one_run_started_together_one_drives_and_the_other_is_refused(tmp_path, shared_env):
    gate = tmp_path / "go"
    ana, ben, cid = machine(tmp_path, "ana"), machine(tmp_path, "ben"), machine(tmp_path, "cid")
    run_id = request_run(ana, shared_env, gated_plan(ana / "plan.json", "alpha", gate))
    racers = [start(where, shared_env, "execute", "--run", run_id) for where in (ben, cid)]
    try:
        # The run cannot finish before the gate opens, so the first to exit is the one refused.
        loser = wait_until(lambda: next((p for p in racers if p.poll() is not None), None), timeout=120,
                           what="one of them to be refused")
        gate.touch()
        results = {process.pid: finish(process) for process in racers}
    finally:
        gate.touch()
        for process in racers:
            process.kill()
    refused = results[loser.pid]
    (winner,) = [result for pid, result in results.items() if pid != loser.pid]
    assert refused.code == 3 and refused.err.count("\n") == 1 and "is being driven by runtime" in refused.err, \
        refused.out + refused.err
    assert winner.code == 0 and "completed" in winner.out, winner.out + winner.err


def _lease(env: dict[str, str], run_id: str) -> dict:
    """The run's lease as the ledger holds it (owner, heartbeat, expiry, when taken)."""
    engine = make_engine(env.get("ORCHESTRATE_DB_URL") or sqlite_url(Path(env["PIPELINE_DB_PATH"])))
    try:
        return next(lease for lease in StateReader(engine).get_leases() if lease["run_id"] == run_id)
    finally:
        engine.dispose()


def test_a_runtime_frozen_past_its_lease_finds_its_run_taken_over_and_stops_without_writing(tmp_path, shared_env):
    """SIGSTOP stands for a runtime cut off (a network partition, a laptop lid): its lease
    expires, another runtime takes the run over, and when it wakes it must not drive it on."""
    gate = tmp_path / "go"
    ana, ben = machine(tmp_path, "ana"), machine(tmp_path, "ben")
    run_id = request_run(ana, shared_env, gated_plan(ana / "plan.json", "alpha", gate))
    frozen = start(ana, shared_env, "execute", "--run", run_id)
    try:
        wait_until(lambda: driven(runs_json(ben, shared_env), frozen.pid), timeout=120,
                   what="the first runtime to drive the run")
        frozen.send_signal(signal.SIGSTOP)
        expires = _lease(shared_env, run_id)["expires_at"]
        gate.touch()
        taken = wait_until(lambda: (r := run_cli(ben, shared_env, "execute", "--run", run_id, "-q")).code != 3 and r,
                           timeout=120, interval=0.2, what="the run to be taken over")
        assert taken.code == 0 and "whose lease expired" in taken.out, taken.out + taken.err
        assert _lease(shared_env, run_id)["acquired_at"] >= expires
        completed = json.loads(run_cli(ben, shared_env, "runs", "show", run_id, "--json").out)
        frozen.send_signal(signal.SIGCONT)
        woken = finish(frozen)
    finally:
        gate.touch()
        frozen.send_signal(signal.SIGCONT)
        frozen.kill()
    assert woken.code == 3, woken.out + woken.err
    assert f"another runtime took over run {run_id}" in woken.err
    assert "completed in" not in woken.out
    after = json.loads(run_cli(ben, shared_env, "runs", "show", run_id, "--json").out)
    assert after["status"] == completed["status"] == "completed"
    assert after["tasks"] == completed["tasks"], "the woken runtime wrote nothing to the run"
