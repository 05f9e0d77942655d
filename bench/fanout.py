"""Fan-out benchmark: N independent `true` tasks at concurrency J, orchestrate vs `make -jJ`.

Both run in this process's machine in the same invocation, so the ratio is meaningful even on
a slow or busy machine. orchestrate's time is the whole command (interpreter start, plan
validation, run creation, execution through the actors, every transition in the ledger);
make's is the whole make command.

    python bench/fanout.py [--tasks 1000] [--concurrency 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_plan(directory: Path, tasks: int) -> Path:
    plan = {
        "id": "fanout",
        "tasks": [{"id": f"t{i:05d}", "tool": "shell", "command": "true"} for i in range(tasks)],
    }
    path = directory / "fanout.json"
    path.write_text(json.dumps(plan))
    return path


def write_makefile(directory: Path, tasks: int) -> Path:
    names = [f"t{i:05d}" for i in range(tasks)]
    lines = [".PHONY: all " + " ".join(names), "all: " + " ".join(names)]
    lines += [f"{name}:\n\ttrue" for name in names]
    path = directory / "Makefile"
    path.write_text("\n".join(lines) + "\n")
    return path


def time_orchestrate(plan: Path, work: Path, concurrency: int) -> float:
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    command = [sys.executable, str(ROOT / "bin" / "orchestrate"), "--state-dir", str(state),
               "run", str(plan), "-j", str(concurrency), "--quiet"]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=work, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        sys.exit(f"orchestrate failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    with sqlite3.connect(state / "orchestration.db") as db:
        done = db.execute("select count(*) from tasks where state = 'COMPLETED'").fetchone()[0]
    if done != len(json.loads(plan.read_text())["tasks"]):
        sys.exit(f"only {done} tasks completed")
    return elapsed


def time_make(makefile: Path, concurrency: int) -> float:
    started = time.perf_counter()
    subprocess.run(["make", "-s", f"-j{concurrency}", "-f", str(makefile)], cwd=makefile.parent,
                   check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orchestrate-bench-") as tmp:
        work = Path(tmp)
        plan = write_plan(work, args.tasks)
        makefile = write_makefile(work, args.tasks)
        ours, theirs = [], []
        for _ in range(args.repeat):
            theirs.append(time_make(makefile, args.concurrency))
            ours.append(time_orchestrate(plan, work, args.concurrency))
    o, m = statistics.median(ours), statistics.median(theirs)
    print(f"fanout: {args.tasks} x `true`, concurrency {args.concurrency}, median of {args.repeat} ({os.cpu_count()} cpus)")
    print(f"  make -j{args.concurrency}:     {m:7.3f} s")
    print(f"  orchestrate -j{args.concurrency}: {o:7.3f} s   ({args.tasks / o:,.0f} tasks/s end to end)")
    print(f"  ratio orchestrate/make: {o / m:.2f}x")


if __name__ == "__main__":
    main()
