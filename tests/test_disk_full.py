"""A full disk under the state directory: the runtime stays alive, says so once, loses nothing
it recorded, and the run resumes once space is freed.

The state directory is a 3 MB tmpfs (root only: skipped, saying why, where mount is refused).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ledger

STATE_SIZE = "3m"


def _mount(directory: Path) -> str:
    """"" if a tmpfs of STATE_SIZE is mounted on ``directory``, else why not."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STATE_SIZE},mode=0700", "tmpfs", str(directory)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return "" if done.returncode == 0 else done.stderr.strip() or f"mount exited {done.returncode}"


@pytest.fixture
def small_state_dir(tmp_path):
    state = tmp_path / ".state"
    why = _mount(state)
    if why:
        pytest.skip(f"cannot mount a {STATE_SIZE} tmpfs for the state directory: {why}")
    yield state
    subprocess.run(["umount", "-l", str(state)], capture_output=True, timeout=30)


def test_a_full_disk_fails_the_task_keeps_the_runtime_alive_and_the_run_resumes(tmp_path, orchestrate,
                                                                               small_state_dir):
    filler = small_state_dir / "filler"
    filler.write_bytes(b"\0" * 1024 * 1024)
    effects = tmp_path / "effects"
    effects.touch()
    once = tmp_path / "big-ran-once"
    # The first attempt prints 4 MB into its log on the full disk; a resumed one prints a line.
    big = f"if [ -e {once} ]; then echo fits; else touch {once}; yes | head -c 4000000; fi"
    tasks = [{"id": "big", "tool": "shell", "command": big}]
    tasks += [{"id": f"t{i}", "tool": "shell", "command": f"sleep 0.2; echo t{i} >> {effects}",
               "depends_on": ["big"] if i >= 5 else []} for i in range(10)]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "w", "tasks": tasks}))

    first = orchestrate("run", str(plan), "-j", "4", env={"ORCHESTRATE_DB_STALL_LIMIT_S": "3"}, timeout=120)

    assert first.code in (1, 3), first.out + first.err
    assert "Traceback" not in first.err and "Errno 28" not in first.err, first.err
    said = [line for line in first.err.splitlines() if "runtime log" in line]
    assert len(said) <= 1, first.err
    if first.code == 3:
        assert "disk full" in first.err and str(small_state_dir) in first.err, first.err
    db = ledger(tmp_path)
    run_id, status = db.execute("select run_id, status from runs").fetchone()
    big_state = db.execute("select state from tasks where task_key = 'w/big'").fetchone()[0]
    assert big_state != "COMPLETED"
    if first.code == 1:  # the ledger kept up: the task's failure says why
        assert "its output could not be written: no space left on" in first.out, first.out
    db.close()

    filler.unlink()
    resumed = orchestrate("execute", "--run", run_id, timeout=120)

    assert resumed.code == 0, resumed.out + resumed.err
    db = ledger(tmp_path)
    assert db.execute("select status from runs").fetchone()[0] == "completed"
    assert Counter(r[0] for r in db.execute("select state from tasks")) == {"COMPLETED": 11}
    assert Counter(effects.read_text().split()) == {f"t{i}": 1 for i in range(10)}
