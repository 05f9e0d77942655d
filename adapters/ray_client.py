"""The runtime's side of the Ray bridge: submit attempts, cancel them, hear how they end.

:class:`RayBridge` starts ``python -m adapters.ray_bridge`` (see that module for why the Ray
driver is a process of its own) on first use and again after it died, writes it commands and
reads its events, calling back the executor on its own threads — the executor actor never
waits for Ray. Nothing here imports Ray.

Threads: a *writer* thread owns the bridge process (it starts it, so the bridge's
``PR_SET_PDEATHSIG`` is tied to a thread that lives as long as this object, not to an actor a
supervisor may restart) and writes commands; a *reader* thread per bridge process reads its
events. When a bridge process ends, every attempt it was running ends ``lost`` with the reason
(the cluster is down, or the bridge died), and the next submission starts a new bridge.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from domain.outcomes import ProcessOutcome, ProcessResult

log = structlog.get_logger("orchestrate.ray")

OnRemoteStart = Callable[[str, str], None]  # node id, node address
OnRemoteEnd = Callable[[ProcessResult], None]

_HOME = str(Path(__file__).resolve().parent.parent)
STOP_GRACE_S = 5.0


@dataclass(slots=True)
class _Pending:
    on_started: OnRemoteStart
    on_end: OnRemoteEnd
    generation: int = -1


def remote_result(event: dict[str, Any]) -> ProcessResult:
    """The :class:`ProcessResult` of a bridge ``end`` event (no local pid: it ran elsewhere).
    A task whose cwd or interpreter is missing on its node could not start by the plan's fault."""
    outcome = event.get("outcome", "lost")
    error = str(event.get("error") or "")
    # What the plan names is missing on the node: the plan's fault (bad input), not the cluster's.
    plan_fault = outcome in ("spawn_error_cwd", "spawn_error_python")
    if outcome == "spawn_error_cwd":
        error = f"{error} (the task's cwd does not exist on the Ray node)"
    if plan_fault:
        outcome = "spawn_error"
    try:
        kind = ProcessOutcome(outcome)
    except ValueError:
        kind, error = ProcessOutcome.LOST, f"unknown outcome {outcome!r} from the Ray bridge"
    return ProcessResult(
        pid=-1,
        create_time=0.0,
        exit_code=event.get("exit_code"),
        signal=event.get("signal"),
        outcome=kind,
        duration_s=float(event.get("duration_s") or 0.0),
        max_rss_bytes=int(event.get("max_rss_bytes") or 0),
        cpu_s=float(event.get("cpu_s") or 0.0),
        error=error,
        plan_fault=plan_fault,
    )


class RayBridge:
    """One Ray driver process for one cluster ``address`` (``runtime_env``: Ray's, per job)."""

    def __init__(self, address: str, runtime_env: dict[str, Any], stderr_path: str) -> None:
        self.address = address
        self.runtime_env = runtime_env
        self.stderr_path = stderr_path
        self._commands: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._dead: set[int] = set()  # generations whose bridge process has ended
        self._process: subprocess.Popen[str] | None = None
        self._writer = threading.Thread(target=self._write_loop, name="orchestrate-ray-bridge", daemon=True)
        self._started = False

    # -- API, any thread ------------------------------------------------------------------------
    def submit(self, attempt_id: str, spec: dict[str, Any], options: dict[str, Any], log_path: str,
               result_path: str, on_started: OnRemoteStart, on_end: OnRemoteEnd) -> None:
        """Run ``spec`` (see :func:`adapters.ray_remote.run_attempt`) with Ray ``options``; its
        output is appended to ``log_path``; ``on_started`` then ``on_end`` are called once each
        (``on_end`` alone when it never started)."""
        with self._lock:
            self._pending[attempt_id] = _Pending(on_started, on_end)
            if not self._started:
                self._started = True
                self._writer.start()
        self._commands.put({"op": "submit", "id": attempt_id, "spec": spec, "options": options,
                            "log_path": log_path, "result_path": result_path})

    def cancel(self, attempt_id: str, why: str = "cancelled") -> None:
        """Stop the attempt (``ray.cancel(force=True)``; its keeper kills the process tree)."""
        self._commands.put({"op": "cancel", "id": attempt_id, "why": why})

    def stop(self) -> None:
        """End the bridge without reporting anything more: it cancels what runs on the cluster
        and exits, or is killed when it does not in time. The runtime is stopping: whatever
        was running is recorded by it (interrupted), not by callbacks."""
        with self._lock:
            self._pending.clear()
        self._commands.put(None)
        if self._started:
            self._writer.join(STOP_GRACE_S + 1.0)
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    # -- the writer thread ----------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            command = self._commands.get()
            if command is None:
                self._close()
                return
            if command["op"] == "cancel":
                with self._lock:
                    if command["id"] not in self._pending:
                        continue  # it ended already; no bridge is started for nothing
            while True:
                process = self._process
                if process is None or self._generation in self._dead:
                    try:
                        process = self._spawn()
                    except OSError as error:
                        self._fail(command, f"could not start the Ray bridge: {error.strerror or error}")
                        break
                with self._lock:
                    # Under the lock the reader takes to sweep a dead bridge's attempts: this
                    # attempt is either swept with it, or sees it dead here and goes to a new one.
                    if self._generation in self._dead:
                        continue
                    if command["op"] == "submit":
                        pending = self._pending.get(command["id"])
                        if pending is None:
                            break
                        pending.generation = self._generation
                try:
                    assert process.stdin is not None
                    process.stdin.write(json.dumps(command) + "\n")
                    process.stdin.flush()
                except (BrokenPipeError, ValueError, OSError):
                    pass  # its reader sees it end and reports this attempt lost
                break

    def _spawn(self) -> subprocess.Popen[str]:
        self._generation += 1
        stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "adapters.ray_bridge", self.address, json.dumps(self.runtime_env),
                 str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=_HOME,
                start_new_session=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            )
        finally:
            stderr.close()
        self._process = process
        threading.Thread(target=self._read_loop, args=(process, self._generation),
                         name="orchestrate-ray-events", daemon=True).start()
        log.info("ray_bridge_started", address=self.address, pid=process.pid)
        return process

    def _fail(self, command: dict[str, Any], why: str) -> None:
        with self._lock:
            pending = self._pending.pop(command["id"], None)
        if pending is not None:
            pending.on_end(remote_result({"outcome": "lost", "error": why}))

    def _close(self) -> None:
        process = self._process
        if process is None or process.stdin is None:
            return
        try:
            process.stdin.close()
            process.wait(STOP_GRACE_S)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()

    # -- a reader thread per bridge process -------------------------------------------------------
    def _read_loop(self, process: subprocess.Popen[str], generation: int) -> None:
        down = ""
        stream: IO[str] = process.stdout  # type: ignore[assignment]
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "down":
                down = str(event.get("error") or "the Ray cluster is unreachable")
                log.warning("ray_cluster_down", address=self.address, error=down)
            elif kind == "started":
                with self._lock:
                    pending = self._pending.get(event.get("id", ""))
                if pending is not None:
                    pending.on_started(str(event.get("node", "")), str(event.get("ip", "")))
            elif kind == "end":
                with self._lock:
                    pending = self._pending.pop(event.get("id", ""), None)
                if pending is not None:
                    pending.on_end(remote_result(event))
        code = process.wait()
        why = down or f"the Ray bridge exited (code {code}); see {self.stderr_path}"
        with self._lock:
            self._dead.add(generation)
            lost = [key for key, pending in self._pending.items() if pending.generation == generation]
            ended = [self._pending.pop(key) for key in lost]
        for pending in ended:
            pending.on_end(remote_result({"outcome": "lost", "error": why}))
