"""A real two-node Ray cluster on this machine, owned by the tests that start it.

Both nodes are ``ray start --block`` processes in the foreground of their own sessions: the head
(custom resource ``nodeA``) and a second node joined to it (``nodeB``), with their ports picked
free, Ray's session files in a temporary directory of their own (``--temp-dir``), a small object
store, and node health checked every half second so a lost node is noticed in seconds rather
than half a minute. ``stop()`` ends both and checks with psutil that no process of theirs is
left (raylet, GCS, workers).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
OBJECT_STORE_BYTES = 100 * 1024 * 1024
# Read by the GCS and raylets (RayConfig); defaults notice a dead node after ~30 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "4",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ports() -> list[str]:
    """Every port a node would otherwise take from a fixed default (and clash with another
    cluster on this machine)."""
    flags = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port")
    return [part for flag in flags for part in (flag, str(free_port()))]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class RayCluster:
    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's unix socket paths live below it and must fit in 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        self.env = {**os.environ, **FAST_HEALTH_CHECKS}
        self.head: subprocess.Popen[bytes] | None = None
        self.node_b: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, float] = {}  # every process of the cluster seen: pid -> create time

    def _start(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(Path(self.temp_dir) / log_name, "ab") as log:
            return subprocess.Popen(
                [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                 "--object-store-memory", str(OBJECT_STORE_BYTES), "--min-worker-port", "0",
                 "--max-worker-port", "0", *_ports(), *args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )

    def start(self) -> RayCluster:
        self.head = self._start(
            ["--head", "--port", str(self.port), "--num-cpus", "2", "--include-dashboard=false",
             "--temp-dir", self.temp_dir,
             "--resources", json.dumps({"nodeA": 100})],
            "head.log",
        )
        self._wait_for(lambda: accepts(self.port), "the head's GCS to accept connections")
        self.start_node_b()
        return self

    def start_node_b(self) -> None:
        self.node_b = self._start(
            ["--address", self.address, "--num-cpus", "2", "--resources", json.dumps({"nodeB": 100})],
            "node-b.log",
        )
        # `ray start` says so once the node has registered with the head.
        self._wait_for(lambda: "Ray runtime started" in self.log("node-b.log"), "the second node to join")

    def _wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():
            if self.head is not None and self.head.poll() is not None:
                raise RuntimeError(f"ray head exited ({self.head.returncode}): {self.log('head.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {self.log('head.log')}")
            time.sleep(0.2)

    def log(self, name: str) -> str:
        try:
            return (Path(self.temp_dir) / name).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _tree(self, process: subprocess.Popen[bytes] | None) -> list[psutil.Process]:
        if process is None:
            return []
        try:
            root = psutil.Process(process.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        for member in found:
            try:
                self._seen[member.pid] = member.create_time()
            except psutil.Error:
                pass
        return found

    def kill_node_b(self) -> None:
        """The second node dies at once (``kill -9`` of its raylet and everything of it)."""
        for member in self._tree(self.node_b):
            try:
                member.kill()
            except psutil.Error:
                pass
        assert self.node_b is not None
        self.node_b.wait(STOP_TIMEOUT_S)

    def stop_head(self) -> None:
        """Stop the head as ``ray stop`` does: SIGTERM to each of its processes (GCS, raylet,
        workers, ``ray start``). Returns without waiting; :meth:`stop` reaps what is left."""
        for member in self._tree(self.head):
            try:
                member.terminate()
            except psutil.Error:
                pass

    def leftovers(self) -> list[str]:
        """Processes of this cluster still running: seen in its trees, or started from its
        temp dir or with its address."""
        left = []
        for process in psutil.process_iter(["pid", "cmdline", "create_time"]):
            cmdline = " ".join(process.info["cmdline"] or ())
            seen = self._seen.get(process.info["pid"]) == process.info["create_time"]
            if seen or self.temp_dir in cmdline or self.address in cmdline:
                if process.pid != os.getpid():
                    left.append(f"{process.info['pid']}: {cmdline[:120]}")
        return left

    def stop(self) -> list[str]:
        """Stop both nodes (SIGTERM to each of their processes, SIGKILL to what is left after
        the grace period); returns the processes that survived even that (none, or the test
        fails)."""
        trees = self._tree(self.node_b) + self._tree(self.head)
        # Every process, not only `ray start`: its own SIGTERM handling can wait half a minute.
        for member in trees:
            try:
                member.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(trees, timeout=STOP_GRACE_S)
        for member in alive:
            try:
                member.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        for process in (self.node_b, self.head):
            if process is not None:
                process.wait(STOP_TIMEOUT_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left
