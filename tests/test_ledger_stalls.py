"""The durability contract under a database stall, end to end through the real command line.

Another process holds ``BEGIN EXCLUSIVE`` on the ledger's database while a run is going. A
state change is done only when it is committed, so the run either ends exit 0 with every task
COMPLETED in the ledger, or it stops saying why and ``execute --run`` finishes it without
running any completed task again (each task's effect is a line in a file: exactly once).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ORCHESTRATE, ledger, wait_until

TASKS = 40
STALL_LIMIT_ENV = "ORCHESTRATE_DB_STALL_LIMIT_S"


def write_plan(tmp_path: Path) -> Path:
    import json

    effects = tmp_path / "effects"
    effects.touch()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workstreams": [{"id": "w", "tasks": [
        {"id": f"t{i}", "tool": "shell", "command": f"sleep 0.4; echo t{i} >> {effects}"} for i in range(TASKS)]}]}))
    return plan


def effect_lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "effects").read_text().split()


class ExclusiveLock:
    """Another process's writer: holds ``BEGIN EXCLUSIVE`` on ``db`` for ``seconds`` (the fault
    being injected), on a thread so the test can watch the runtime meanwhile."""

    def __init__(self, db: Path, seconds: float) -> None:
        self.db, self.seconds = db, seconds
        self.taken = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        connection = sqlite3.connect(self.db, isolation_level=None, timeout=30)
        try:
            connection.execute("BEGIN EXCLUSIVE")
            self.taken.set()
            threading.Event().wait(self.seconds)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    def start(self) -> None:
        self.thread.start()
        assert self.taken.wait(30), "could not take the database lock"

    def join(self) -> None:
        self.thread.join(60)


def run_with_a_lock(tmp_path: Path, seconds: float, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the plan at -j 4 and lock the database for ``seconds`` once a few tasks are done."""
    import os

    plan = write_plan(tmp_path)
    environment = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")}
    environment.update(env or {})
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", str(plan), "-j", "4"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    lock = ExclusiveLock(tmp_path / ".state" / "orchestration.db", seconds)
    try:
        wait_until(lambda: len(effect_lines(tmp_path)) >= 8, timeout=60, what="a few tasks to finish")
        lock.start()
        out, err = process.communicate(timeout=180)
    finally:
        process.kill()
        lock.join()
    return process.returncode, out, err


def assert_completed_exactly_once(tmp_path: Path) -> None:
    db = ledger(tmp_path)
    assert db.execute("select status from runs").fetchone()[0] == "completed"
    assert Counter(r[0] for r in db.execute("select state from tasks")) == {"COMPLETED": TASKS}
    assert Counter(effect_lines(tmp_path)) == {f"t{i}": 1 for i in range(TASKS)}, "every effect exactly once"


def run_id(tmp_path: Path) -> str:
    return ledger(tmp_path).execute("select run_id from runs").fetchone()[0]


@pytest.mark.parametrize("lock_s", [3, 8])
def test_a_database_locked_mid_run_never_loses_a_record_nor_claims_false_success(tmp_path, orchestrate, lock_s):
    code, out, err = run_with_a_lock(tmp_path, lock_s)
    if code == 0:
        assert_completed_exactly_once(tmp_path)
    else:
        assert "database" in err, out + err
        resumed = orchestrate("execute", "--run", run_id(tmp_path))
        assert resumed.code == 0, resumed.out + resumed.err
        assert_completed_exactly_once(tmp_path)
    if lock_s >= 8:  # a shorter lock may end before the first warning is due
        assert "ledger waiting for the database (locked by another process)" in out, out


def test_a_lock_longer_than_the_stall_limit_stops_with_one_line_and_resumes_exactly(tmp_path, orchestrate):
    code, out, err = run_with_a_lock(tmp_path, 8, env={STALL_LIMIT_ENV: "3"})
    assert code == 3, out + err
    db_path = tmp_path / ".state" / "orchestration.db"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(db_path) in lines[0] and "locked by another process" in lines[0]
    assert f"orchestrate execute --run {run_id(tmp_path)}" in lines[0]
    assert "completed" not in out.split("\n\n")[-1]
    resumed = orchestrate("execute", "--run", run_id(tmp_path))
    assert resumed.code == 0, resumed.out + resumed.err
    assert_completed_exactly_once(tmp_path)


@pytest.fixture
def immutable(tmp_path):
    """Make files immutable (``chattr +i``: even root cannot write them); undone in teardown."""
    made: list[Path] = []

    def make(path: Path) -> None:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_a_read_only_database_stops_with_one_line_naming_it_and_the_run_resumes(tmp_path, orchestrate, immutable):
    import json

    effects = tmp_path / "effects"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "w", "tasks": [
        # Tasks running when the runtime stops are killed (in their sleep) and run again on resume.
        {"id": f"t{i}", "tool": "shell", "command": f"sleep 0.4; echo t{i} >> {effects}"} for i in range(6)]}))
    created = orchestrate("request", "--workstream", str(plan), "--json")
    run = created.json()["run_id"]
    db_path = tmp_path / ".state" / "orchestration.db"
    immutable(db_path)

    stopped = orchestrate("execute", "--run", run)

    assert stopped.code == 3, stopped.out + stopped.err
    lines = stopped.err.strip().splitlines()
    assert len(lines) == 1 and str(db_path) in lines[0] and "read-only" in lines[0], stopped.err
    assert f"orchestrate execute --run {run}" in lines[0]
    subprocess.run(["chattr", "-i", str(db_path)], check=True)
    resumed = orchestrate("execute", "--run", run)
    assert resumed.code == 0, resumed.out + resumed.err
    db = ledger(tmp_path)
    assert Counter(r[0] for r in db.execute("select state from tasks")) == {"COMPLETED": 6}
    assert Counter(effects.read_text().split()) == {f"t{i}": 1 for i in range(6)}
