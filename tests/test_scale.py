"""A large plan runs to completion with memory proportional to it (the 100,000-task run is
measured by ``bench/scale.py``; this is its 20,000-task sibling, small enough for the suite)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil

from tests.conftest import ORCHESTRATE, ledger

TASKS = 20_000
# Measured: about 240 MiB at 20k tasks, 775 MiB at 100k. The bound catches a plan held
# several times over (that was 1.3 GiB at 100k) without depending on the machine.
PEAK_RSS_MIB = 500


def test_twenty_thousand_tasks_complete_with_bounded_memory(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "many", "tasks": [
        {"id": f"t{i:05d}", "tool": "shell", "command": "true"} for i in range(TASKS)]}))
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", str(plan), "-j", "4", "--quiet"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    peak = 0
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.1)  # a sampling period, not a wait for an event
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, out + err
    assert ledger(tmp_path).execute("select count(*) from tasks where state = 'COMPLETED'").fetchone()[0] == TASKS
    assert peak / 2**20 < PEAK_RSS_MIB, f"peak RSS {peak / 2**20:.0f} MiB"
