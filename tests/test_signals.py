"""Stop signals, end to end through the real command line: SIGINT, SIGTERM and SIGHUP all stop
a foreground run the same way — every task's process tree killed, the running attempts recorded
as interrupted, one line on stderr, exit 128 + N — and the run resumes where it stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.leftovers import marked_processes
from tests.conftest import ORCHESTRATE, ledger, ledger_errors, runtime_env, wait_until
from tests.test_resilience import write_json

QUICK, SLOW = 5, 20
# The first attempt of a slow task runs until stopped; the resumed attempt finishes at once.
SLOW_COMMAND = 'echo "$ORCHESTRATE_TASK" >> effects.txt; if [ "$ORCHESTRATE_ATTEMPT" = 1 ]; then exec sleep 30; fi'


def mixed_plan(tmp_path: Path, slow_command: str = SLOW_COMMAND) -> Path:
    tasks = [{"id": f"quick{i}", "tool": "shell", "command": 'echo "$ORCHESTRATE_TASK" >> effects.txt'}
             for i in range(QUICK)]
    tasks += [{"id": f"slow{i:02d}", "tool": "shell", "command": slow_command} for i in range(SLOW)]
    return write_json(tmp_path / "plan.json", {"id": "w", "tasks": tasks})


# The runtime keeps a stop signal its parent ignored ignored (nohup, or `&` in a script, ignore
# SIGHUP and SIGINT), so these tests start it with every stop signal at its default, whatever
# the environment that runs the suite did: a launcher resets them, then execs.
DEFAULT_STOP_SIGNALS = (
    "import os, signal, sys\n"
    "for name in ('SIGINT', 'SIGTERM', 'SIGHUP'):\n"
    "    signal.signal(getattr(signal, name), signal.SIG_DFL)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


def runtime_command(*args: str) -> list[str]:
    """``orchestrate ARGS`` with default dispositions for the stop signals."""
    return [sys.executable, "-c", DEFAULT_STOP_SIGNALS, str(ORCHESTRATE), *args]


def start_run(tmp_path: Path, plan: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(runtime_command("run", str(plan), "-j", str(QUICK + SLOW)), env=runtime_env(tmp_path),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def count(tmp_path: Path, query: str) -> int:
    try:
        return ledger(tmp_path).execute(query).fetchone()[0]
    except ledger_errors():  # the runtime is still creating the database
        return -1


def wait_for_slow_tasks_running(tmp_path: Path) -> str:
    """Poll until the quick tasks completed and every slow one is a running `sleep`; the run id."""
    try:
        wait_until(lambda: count(tmp_path, "select count(*) from tasks where state = 'COMPLETED'") == QUICK
                   and count(tmp_path, "select count(*) from step_attempts where status = 'IN_PROGRESS'") == SLOW,
                   timeout=60, what="the quick tasks to complete and the slow ones to start")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}; {where_it_is(tmp_path)}") from None
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    wait_until(lambda: len(marked_processes(run_id)) == SLOW, timeout=60, what="a sleep per slow task")
    # A marked process may still be the shell before its `echo`: a stop then would kill it
    # before the first attempt's effect is written (seen on a loaded machine).
    wait_until(lambda: len(effects(tmp_path)) == QUICK + SLOW, timeout=60, what="every first attempt's effect")
    return run_id


def where_it_is(tmp_path: Path) -> str:
    """What the ledger and the runtime's log say, for a test that waited in vain."""
    try:
        db = ledger(tmp_path)
        tasks = db.execute("select state, count(*) from tasks group by 1").fetchall()
        attempts = db.execute("select status, count(*) from step_attempts group by 1").fetchall()
    except ledger_errors() as error:
        tasks, attempts = str(error), ""
    log = tmp_path / ".state" / "logs" / "runtime.jsonl"
    tail = log.read_text(errors="replace").splitlines()[-8:] if log.exists() else []
    return f"tasks {tasks}, attempts {attempts}, runtime log tail: {tail}"


def effects(tmp_path: Path) -> list[str]:
    path = tmp_path / "effects.txt"
    return sorted(path.read_text().split()) if path.exists() else []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_kills_every_task_records_them_interrupted_and_the_run_resumes(
    tmp_path: Path, orchestrate, signum: signal.Signals, db_url: str | None
) -> None:
    process = start_run(tmp_path, mixed_plan(tmp_path))
    try:
        run_id = wait_for_slow_tasks_running(tmp_path)
        process.send_signal(signum)
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 128 + signum
    assert err.splitlines() == [
        (f"orchestrate: stopped by {signum.name}; {SLOW} tasks interrupted; "
         f"resume with: orchestrate execute --run {run_id}")
    ]
    assert marked_processes(run_id) == []
    db = ledger(tmp_path)
    assert db.execute("select status from runs").fetchone()[0] == "running"
    assert [tuple(row) for row in db.execute("select status, error_class, count(*) from step_attempts "
                                             "where step_name like 'w/slow%' group by 1, 2")] == [
        ("FAILED", "interrupted", SLOW)]

    resumed = orchestrate("execute", "--run", run_id)
    assert resumed.code == 0, resumed.out + resumed.err
    assert db.execute("select status from runs").fetchone()[0] == "completed"
    quick = [f"w/quick{i}" for i in range(QUICK)]
    slow = [f"w/slow{i:02d}" for i in range(SLOW)]
    assert effects(tmp_path) == sorted(quick + slow + slow), "quick tasks once; slow ones once per attempt"
    attempts = dict(db.execute("select step_name, max(attempt) from step_attempts group by 1").fetchall())
    assert attempts == {key: 1 for key in quick} | {key: 2 for key in slow}


def test_a_second_signal_kills_everything_at_once_and_exits(tmp_path: Path, orchestrate) -> None:
    # Tasks that ignore SIGTERM hold the first, graceful stop for its whole grace period.
    plan = mixed_plan(tmp_path, "trap '' TERM; " + SLOW_COMMAND)
    process = start_run(tmp_path, plan)
    try:
        run_id = wait_for_slow_tasks_running(tmp_path)
        process.send_signal(signal.SIGTERM)
        # The stop begins by closing the control socket: the first signal has been handled.
        wait_until(lambda: not (tmp_path / ".state" / "orchestrate.sock").exists(), what="the stop to begin")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    assert err.splitlines() == [
        ("orchestrate: stopped by SIGTERM (second signal: processes killed at once); "
         f"resume with: orchestrate execute --run {run_id}")
    ]
    assert marked_processes(run_id) == []
    resumed = orchestrate("execute", "--run", run_id)
    assert resumed.code == 0, resumed.out + resumed.err
    assert ledger(tmp_path).execute("select status from runs").fetchone()[0] == "completed"
    assert len(effects(tmp_path)) == QUICK + 2 * SLOW


def test_sighup_ignored_by_nohup_stays_ignored(tmp_path: Path) -> None:
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "wait", "tool": "shell", "command": "while [ ! -e go ]; do sleep 0.05; done"}]})
    process = subprocess.Popen(["nohup", sys.executable, str(ORCHESTRATE), "run", str(plan)], cwd=tmp_path,
                               stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: count(tmp_path, "select count(*) from step_attempts where status = 'IN_PROGRESS'") == 1,
                   timeout=60, what="the task to start")
        process.send_signal(signal.SIGHUP)  # ignored: discarded by the kernel as it is sent
        (tmp_path / "go").touch()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, out + err
    assert ledger(tmp_path).execute("select status from runs").fetchone()[0] == "completed"


def test_serve_stops_on_sigterm_and_names_the_runs_to_resume(tmp_path: Path, orchestrate) -> None:
    process = subprocess.Popen(runtime_command("serve", "-j", str(QUICK + SLOW)), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (tmp_path / ".state" / "orchestrate.sock").exists(), timeout=60, what="the socket")
        submitted = orchestrate("submit", str(mixed_plan(tmp_path)))
        assert submitted.code == 0, submitted.err
        run_id = wait_for_slow_tasks_running(tmp_path)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    assert err.splitlines() == [
        f"orchestrate: stopped by SIGTERM; {SLOW} tasks interrupted; resume with: orchestrate execute --run {run_id}"
    ]
    assert marked_processes(run_id) == []
