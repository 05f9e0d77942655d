"""A large plan runs to completion with memory proportional to it (the 100,000-task run is
measured by ``bench/scale.py``; this is its 20,000-task sibling, small enough for the suite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ORCHESTRATE, ledger

TASKS = 20_000
# Measured: about 240 MiB at 20k tasks, 775 MiB at 100k. The bound catches a plan held
# several times over (that was 1.3 GiB at 100k) without depending on the machine.
PEAK_RSS_MIB = 500


def test_twenty_thousand_tasks_complete_with_bounded_memory(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "many", "tasks": [
        {"id": f"t{i:05d}", "tool": "shell", "command": "true"} for i in range(TASKS)]}))
    log = tmp_path / "run.log"
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", str(plan), "-j", "4", "--quiet"],
                                   cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
        # The kernel keeps the peak: wait4 reports it for the runtime (and what it waited for).
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss * 1024  # KiB on Linux
    assert process.returncode == 0, log.read_text()
    assert ledger(tmp_path).execute("select count(*) from tasks where state = 'COMPLETED'").fetchone()[0] == TASKS
    assert peak / 2**20 < PEAK_RSS_MIB, f"peak RSS {peak / 2**20:.0f} MiB"
