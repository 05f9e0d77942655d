"""Scale benchmark: a plan of N independent `true` tasks at concurrency J, run twice — at N and
at 10×N — to see that nothing grows faster than the plan.

Prints, for each size, the whole command's wall time, its peak RSS (the runtime process and
everything it waited for, from ``resource.getrusage(RUSAGE_CHILDREN)``), the tasks the ledger
shows completed, and the wall-time ratio of the big run to the small one (10 means linear).

    python bench/scale.py [--tasks 10000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(tasks: int, concurrency: int) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in MiB, completed tasks in the ledger) of one whole run."""
    with tempfile.TemporaryDirectory(prefix="orchestrate-scale-") as work:
        directory = Path(work)
        plan = directory / "plan.json"
        plan.write_text(json.dumps({"id": "scale", "tasks": [
            {"id": f"t{i:06d}", "tool": "shell", "command": "true"} for i in range(tasks)]}))
        started = time.monotonic()
        completed = subprocess.run(
            [sys.executable, str(ROOT / "bin" / "orchestrate"), "run", str(plan), "-j", str(concurrency), "--quiet"],
            cwd=directory, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        wall = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if completed.returncode != 0:
            sys.exit(f"run of {tasks} tasks failed (exit {completed.returncode}):\n{completed.stdout}{completed.stderr}")
        with sqlite3.connect(directory / ".state" / "orchestration.db") as db:
            done = db.execute("select count(*) from tasks where state = 'COMPLETED'").fetchone()[0]
        # The children's peak is the largest ever seen; runs go small to big, so it is this run's.
        return wall, peak // 1024, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for tasks in (args.tasks, args.tasks * 10):
        wall, rss, done = run_once(tasks, args.concurrency)
        rows.append((tasks, wall, rss, done))
        print(f"{tasks:>8} tasks  wall {wall:8.2f}s  peak RSS {rss:6d} MiB  completed {done}", flush=True)
    (small, small_wall, _, _), (big, big_wall, _, _) = rows
    print(f"wall ratio {big}/{small} tasks: {big_wall / small_wall:.1f}x (10x is linear)")


if __name__ == "__main__":
    main()
