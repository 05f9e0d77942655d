"""Opening the state directory: processes started together, files that are not our database,
and one writer per state directory."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ORCHESTRATE, ledger, wait_until

ONE_TASK = {"id": "w", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]}
LOCKED = "another orchestrate runtime (pid "


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")}


def start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ORCHESTRATE), *args], cwd=cwd, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_db_init_run_run_and_request_started_together_in_a_fresh_directory(tmp_path):
    commands = (("db", "init"), ("run", "plan.json"), ("run", "plan.json"),
                ("request", "--workstream", "plan.json"))
    for round_ in range(10):
        directory = tmp_path / f"round-{round_}"
        directory.mkdir()
        (directory / "plan.json").write_text(json.dumps(ONE_TASK))
        processes = [start(directory, *command) for command in commands]
        outcomes = []
        for command, process in zip(commands, processes, strict=True):
            out, err = process.communicate(timeout=120)
            outcomes.append((command[0], process.returncode, out, err))
        for name, code, out, err in outcomes:
            context = f"round {round_}, {name}: exit {code}\n{out}{err}"
            assert "Traceback" not in err and "locked" not in err.replace(LOCKED, ""), context
            if code != 0:
                # The only acceptable refusal: the state directory is taken, said in one line.
                assert name in ("run", "request") and code == 3, context
                assert len(err.splitlines()) == 1 and LOCKED in err, context
        assert outcomes[0][1] == 0, "db init never has to wait for a runtime"
        db = ledger(directory)
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        runs = db.execute("select status from runs").fetchall()
        completed = sum(1 for name, code, _, _ in outcomes if name == "run" and code == 0)
        assert sum(1 for (status,) in runs if status == "completed") == completed


def sqlite_with_a_foreign_table(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("create table recipes (name text)")
    db.execute("insert into recipes values ('soup')")
    db.commit()
    db.close()


@pytest.mark.parametrize(("make", "why"), [
    (lambda path: path.write_bytes(b""), "0 bytes"),
    (lambda path: path.write_text("my notes, not a database\n"), "not a SQLite file"),
    (sqlite_with_a_foreign_table, "no schema_meta table"),
])
@pytest.mark.parametrize("command", [("runs",), ("db", "init"), ("run", "plan.json"), ("request", "-w", "plan.json")])
def test_a_file_at_the_database_path_that_is_not_ours_is_refused_untouched(tmp_path, orchestrate, make, why, command):
    (tmp_path / "plan.json").write_text(json.dumps(ONE_TASK))
    path = tmp_path / ".state" / "orchestration.db"
    path.parent.mkdir()
    make(path)
    before = path.read_bytes()

    result = orchestrate(*command)

    assert result.code == 3, result.out + result.err
    assert result.err.splitlines() == [
        f"orchestrate: safe mode: {path} is not an orchestrate database ({why}); "
        "move it away or point PIPELINE_DB_PATH elsewhere"
    ]
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_a_foreign_file_named_by_pipeline_db_path_is_refused(tmp_path, orchestrate):
    path = tmp_path / "elsewhere.db"
    sqlite_with_a_foreign_table(path)

    result = orchestrate("runs", env={"PIPELINE_DB_PATH": str(path)})

    assert result.code == 3 and f"{path} is not an orchestrate database" in result.err, result.err


def test_a_missing_database_is_created_and_an_empty_sqlite_file_is_initialised(tmp_path, orchestrate):
    assert orchestrate("runs").code == 0
    assert (tmp_path / ".state" / "orchestration.db").stat().st_size > 0

    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("pragma user_version = 7").connection.close()
    created = orchestrate("db", "init", env={"PIPELINE_DB_PATH": str(empty)})
    assert created.code == 0 and "applied 0001, 0002, 0005" in created.out, created.out + created.err


def test_request_is_refused_while_a_runtime_writes_the_same_state_directory(tmp_path, orchestrate):
    (tmp_path / "plan.json").write_text(json.dumps(ONE_TASK))
    server = start(tmp_path, "serve")
    try:
        wait_until(lambda: orchestrate("ping", timeout=30).code == 0, timeout=60, what="the runtime to listen")

        result = orchestrate("request", "--workstream", "plan.json")

        assert result.code == 3, result.out + result.err
        assert result.err.splitlines() == [
            f"orchestrate: {LOCKED}{server.pid}) is using {tmp_path / '.state'}; "
            "stop it (`orchestrate shutdown`) or use another --state-dir"
        ]
        assert ledger(tmp_path).execute("select count(*) from runs").fetchone()[0] == 0
    finally:
        orchestrate("shutdown")
        server.communicate(timeout=60)
    assert server.returncode == 0

    created = orchestrate("request", "--workstream", "plan.json", "--json")
    assert created.code == 0 and created.json()["created"], created.out + created.err
