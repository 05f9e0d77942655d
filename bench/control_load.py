"""Control-socket load: C concurrent clients x R `status` requests while N tasks run.

Starts `orchestrate serve` on a temporary state directory, submits a plan of N short shell
tasks, and hammers the socket from C client threads (each with its own connection). Prints
every request's outcome and the latency distribution, and checks that the run completed.

    python bench/control_load.py [--clients 100] [--requests 20] [--tasks 500]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from control.client import ControlClient  # noqa: E402


def wait_for_socket(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with ControlClient(path, timeout_s=2) as probe:
                probe.request("ping")
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"no runtime listening at {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orchestrate-control-") as tmp:
        work = Path(tmp)
        plan = work / "plan.json"
        plan.write_text(json.dumps({"id": "load", "tasks": [
            {"id": f"t{i:04d}", "tool": "shell", "command": "sleep 0.01"} for i in range(args.tasks)]}))
        serve = subprocess.Popen([sys.executable, str(ROOT / "bin" / "orchestrate"), "serve", "-j", "4"],
                                 cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        socket_path = work / ".state" / "orchestrate.sock"
        try:
            wait_for_socket(socket_path)
            with ControlClient(socket_path) as control:
                run_id = control.request("submit", {"plan": str(plan)})["run_id"]
            latencies: list[float] = []
            failures: list[str] = []
            lock = threading.Lock()
            start = threading.Barrier(args.clients)

            def client() -> None:
                with ControlClient(socket_path, timeout_s=30) as mine:
                    start.wait()
                    for _ in range(args.requests):
                        began = time.perf_counter()
                        try:
                            mine.request("status", {"run": run_id})
                        except Exception as error:  # every failure is reported, none hidden
                            with lock:
                                failures.append(repr(error))
                            continue
                        with lock:
                            latencies.append(time.perf_counter() - began)

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            hammer = time.perf_counter() - began
            with ControlClient(socket_path, timeout_s=60) as control:
                deadline = time.monotonic() + 300
                while (status := control.request("status", {"run": run_id})["runs"][0]).get("status") != "completed":
                    if time.monotonic() > deadline:
                        sys.exit(f"run did not complete: {status.get('counts')}")
                    time.sleep(0.2)
                control.request("shutdown", {"timeout_s": 5})
            serve.wait(timeout=60)
        finally:
            serve.kill()
    answered = len(latencies)
    total = args.clients * args.requests
    ms = sorted(1000 * x for x in latencies)
    print(f"control load: {args.clients} clients x {args.requests} status requests while {args.tasks} tasks run")
    print(f"  answered {answered}/{total}, failed {len(failures)}; run completed: {status['counts']}")
    if ms:
        p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
        print(f"  latency ms: p50 {statistics.median(ms):.1f}  p90 {p(0.90):.1f}  p99 {p(0.99):.1f}  max {ms[-1]:.1f}")
        print(f"  throughput: {answered / hammer:,.0f} requests/s over {hammer:.2f}s")
    for failure in failures[:5]:
        print(f"  failure: {failure}")
    sys.exit(0 if answered == total else 1)


if __name__ == "__main__":
    main()
