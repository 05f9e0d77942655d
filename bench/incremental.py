"""An incremental run against start-up: how long the quickstart takes when everything is cached.

    python bench/incremental.py [--repeat 7] [--orchestrate CMD]

A copy of ``examples/quickstart`` (with this interpreter's virtualenv as its ``.venv``, as the
tests give it) is run once; then, taking turns ``--repeat`` times:

- ``start-up``: a plan of one ``true`` task, fresh state directory each time: what any run costs
  from process start to exit (interpreter, imports, the ledger, one durable task);
- ``quickstart again``: ``orchestrate run plan`` on the unchanged quickstart, every task reused.

Each quickstart run is checked in its ledger: a new run, completed, whose every attempt was
taken from the cache (adapter ``cache``), or the benchmark stops with exit status 1. Printed:
the medians and what the cached run costs beyond start-up (issue 15 asks under 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    return time.perf_counter() - started, done


def check_all_cached(state: Path, done: subprocess.CompletedProcess) -> None:
    if done.returncode != 0:
        raise SystemExit(f"quickstart exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    db = sqlite3.connect(f"file:{state / 'orchestration.db'}?mode=ro", uri=True)
    run_id, status = db.execute("select run_id, status from runs order by created_at desc limit 1").fetchone()
    adapters = [row[0] for row in db.execute("select adapter from step_attempts where run_id = ?", (run_id,))]
    if status != "completed" or not adapters or set(adapters) != {"cache"}:
        raise SystemExit(f"{run_id}: {status}, attempts by {sorted(set(adapters))}: not every task was reused")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of each (default 7); medians shown")
    parser.add_argument("--orchestrate", metavar="CMD", help="the command to time (default: this checkout's "
                                                              "bin/orchestrate run by this interpreter)")
    args = parser.parse_args(argv)
    orchestrate = (shlex.split(args.orchestrate) if args.orchestrate
                   else [sys.executable, str(ROOT / "bin" / "orchestrate")])
    with tempfile.TemporaryDirectory(prefix="orchestrate-incremental-") as tmp:
        work = Path(tmp)
        quickstart = work / "quickstart"
        shutil.copytree(ROOT / "examples" / "quickstart", quickstart,
                        ignore=shutil.ignore_patterns(".state", "out", "__pycache__", "sandbox"))
        (quickstart / ".venv").symlink_to(sys.prefix, target_is_directory=True)
        (work / "one.json").write_text(json.dumps(
            {"id": "one", "tasks": [{"id": "true", "tool": "shell", "command": "true"}]}))
        _, first = timed([*orchestrate, "run", "plan"], quickstart)
        if first.returncode != 0:
            print(f"the first quickstart run failed:\n{first.stdout[-2000:]}{first.stderr[-2000:]}", file=sys.stderr)
            return 1
        startup, again = [], []
        for turn in range(args.repeat):
            state = work / f"state-{turn}"
            took, done = timed([*orchestrate, "--state-dir", str(state), "run", str(work / "one.json")], work)
            if done.returncode != 0:
                print(f"the one-task run failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            startup.append(took)
            took, done = timed([*orchestrate, "run", "plan"], quickstart)
            check_all_cached(quickstart / ".state", done)
            again.append(took)
    start, cached = statistics.median(startup), statistics.median(again)
    print(f"start-up (one `true` task, start to exit): median {start:.3f} s  "
          f"[{' '.join(f'{t:.2f}' for t in sorted(startup))}]")
    print(f"quickstart again (13 tasks, all reused):    median {cached:.3f} s  "
          f"[{' '.join(f'{t:.2f}' for t in sorted(again))}]")
    print(f"beyond start-up: {cached - start:+.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
