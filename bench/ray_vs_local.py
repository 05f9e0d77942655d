"""The same plan on local executors and on a two-node Ray cluster: 200 independent `sleep 0.5`
shell tasks, run by ``orchestrate run -j J --quiet`` once with the built-in shell adapter and
once with a ``ray`` adapter (both nodes started here by ``ray start``, each with 2 CPUs; a task
asks for 4 / J of a CPU, so the cluster has J slots, as the local runtime does).

Prints each run's wall time from start to exit, the ideal (tasks × 0.5 s / J), the tasks the
ledger shows completed, and for the Ray run how many tasks each node ran. Needs the ``ray``
extra (``pip install -e '.[ray]'``).

    python bench/ray_vs_local.py [--tasks 200] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ray_cluster import RayCluster  # noqa: E402 - after the path is set

SLEEP_S = 0.5
NODE = re.compile(r"on ray node ([0-9a-f]{8})")


def run_plan(tasks: int, concurrency: int, router: dict | None) -> tuple[float, int, collections.Counter[str]]:
    """(wall seconds, completed tasks in the ledger, tasks per Ray node) of one whole run."""
    with tempfile.TemporaryDirectory(prefix="orchestrate-ray-bench-") as work:
        directory = Path(work)
        plan = directory / "plan.json"
        plan.write_text(json.dumps({"id": "sleepers", "tasks": [
            {"id": f"t{i:03d}", "tool": "shell", "command": f"sleep {SLEEP_S}"} for i in range(tasks)]}))
        if router is not None:
            (directory / "router_config.json").write_text(json.dumps(router))
        started = time.monotonic()
        finished = subprocess.run(
            [sys.executable, str(ROOT / "bin" / "orchestrate"), "run", str(plan), "-j", str(concurrency), "--quiet"],
            cwd=directory, capture_output=True, text=True, check=False,
        )
        wall = time.monotonic() - started
        if finished.returncode != 0:
            raise SystemExit(f"the run failed ({finished.returncode}): {finished.stdout}{finished.stderr}")
        with sqlite3.connect(directory / ".state" / "orchestration.db") as db:
            rows = db.execute("SELECT message FROM step_attempts WHERE status = 'COMPLETED'").fetchall()
        nodes = collections.Counter(match.group(1) for (message,) in rows if (match := NODE.search(message or "")))
        return wall, len(rows), nodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    ideal = args.tasks * SLEEP_S / args.concurrency
    print(f"{args.tasks} x sleep {SLEEP_S}, -j {args.concurrency} (ideal {ideal:.2f}s), "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    wall, completed, _ = run_plan(args.tasks, args.concurrency, None)
    print(f"local shell executor     : {wall:6.2f}s  ({completed} completed)")
    cluster = RayCluster()
    try:
        cluster.start()
        router = {"adapters": [{"name": "cluster", "type": "ray", "concurrency": args.concurrency, "settings": {
            "address": cluster.address, "resources": {"num_cpus": 4 / args.concurrency}}}]}
        wall, completed, nodes = run_plan(args.tasks, args.concurrency, router)
        spread = ", ".join(f"{node}…: {count}" for node, count in sorted(nodes.items()))
        print(f"two-node Ray cluster     : {wall:6.2f}s  ({completed} completed; per node {spread})")
    finally:
        left = cluster.stop()
    if left:
        print(f"left running: {left}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
