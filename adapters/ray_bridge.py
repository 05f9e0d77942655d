"""The Ray driver: a process of its own between the runtime and a Ray cluster.

Started by :class:`adapters.ray_client.RayBridge` as ``python -m adapters.ray_bridge``; it is
the only process that imports Ray. Why not the runtime itself: a Ray driver whose cluster goes
away is *terminated by Ray* about 60 s later (``Failed to connect to GCS within 60 seconds ...
The program will terminate``) — that must cost a replaceable helper, not the runtime and every
other task. Ray's import (~1 s, threads, gRPC) stays out of every CLI command too.

Protocol, JSON lines. In (stdin): ``{"op": "submit", "id", "spec", "options", "log_path",
"result_path"}`` and ``{"op": "cancel", "id", "why"}``. Out (stdout): ``{"event": "up"}`` once
connected, ``{"event": "down", "error"}`` when the cluster cannot be reached or is lost (then
the bridge exits), and per attempt ``{"id", "event": "started", "node", "ip"}`` and one
``{"id", "event": "end", ...}`` (the fields of :func:`adapters.ray_remote.run_attempt`'s
``end``, or ``outcome: "lost"`` with ``error`` when the task died with its worker or node).
A task's output is appended to its ``log_path`` here, as it arrives; its result (a python
task's return value, a shell task's ``$ORCHESTRATE_OUTPUT``) is written to ``result_path`` only
if it left one, and only once all of it came (the local adapters' contract: the file is the
proof the callable returned).

Inputs: a submitted spec's ``inputs`` are ``[[name, json text | None, path | None]]`` — a large
upstream result is a file under the runtime's ``.state/results/``, which a node on another
machine cannot read. The bridge runs on the runtime's machine, so it reads each such file and
sends its content with the task (Ray moves a large argument through its object store): the node
gets ``[[name, json text]]``. Reading it here, not in the executor, keeps a large value out of
the actors' mailboxes.

Waiting: one loop on the main thread over ``ray.wait`` of every running attempt's generator
(short timeouts, so commands from stdin are taken up promptly); stdin is read by a thread.
A watchdog thread connects to the cluster's address every second: a cluster that stops
answering is reported ``down`` within seconds, not when Ray gives up.

Linux: the bridge asks for SIGKILL when the runtime thread that started it ends
(``PR_SET_PDEATHSIG``), so a ``kill -9``'d runtime leaves no bridge; Ray then stops the dead
driver's tasks, and each task's keeper kills its process tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from typing import Any

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0
# Consecutive failed probes before the cluster counts as gone.
PROBES_TO_DOWN = 3
WAIT_S = 0.05
# A task still running this long after its own timeout did not kill itself (a stuck node):
# cancelled from here.
BACKSTOP_S = 15.0

_out_lock = threading.Lock()


def emit(message: dict[str, Any]) -> None:
    line = json.dumps(message) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def gcs_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` address; None when it is not one (then not probed)."""
    if ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def probe(endpoint: tuple[str, int] | None) -> str:
    """"" when something accepts connections at ``endpoint`` (or it cannot be probed), else why not."""
    if endpoint is None:
        return ""
    try:
        with socket.create_connection(endpoint, timeout=PROBE_TIMEOUT_S):
            return ""
    except OSError as error:
        return f"cannot connect to {endpoint[0]}:{endpoint[1]}: {error.strerror or error}"


def inline_inputs(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with each input as ``[name, json text]``: a path's content read (see the module).
    Raises OSError (its message names the input and the file) when a result file cannot be read."""
    inputs = []
    for name, text, path in spec.get("inputs") or ():
        if path is not None:
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
            except (OSError, UnicodeDecodeError) as error:
                raise OSError(f"could not read input {name!r}, the result kept in {path}: "
                              f"{getattr(error, 'strerror', None) or error}") from error
        inputs.append([name, text])
    return {**spec, "inputs": inputs}


class _Attempt:
    __slots__ = ("ended", "generator", "id", "log", "result", "result_path", "started_at", "timeout_s",
                 "why_cancelled")

    def __init__(self, attempt_id: str, generator: Any, log_path: str, result_path: str,
                 timeout_s: float | None) -> None:
        self.id = attempt_id
        self.generator = generator
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        self.log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed when the attempt ends
        self.result_path = result_path
        self.result: Any = None  # the result file being received (``<result_path>.part``)
        self.started_at: float | None = None
        self.timeout_s = timeout_s
        self.why_cancelled = ""
        self.ended = False


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class Bridge:
    def __init__(self, ray: Any, remote: Any, endpoint: tuple[str, int] | None) -> None:
        self.ray = ray
        self.remote = remote
        self.endpoint = endpoint
        self.commands: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.attempts: dict[str, _Attempt] = {}
        self.down = ""
        self.closing = False

    # -- threads feeding the loop --------------------------------------------------------------
    def read_commands(self) -> None:
        for line in sys.stdin:
            try:
                self.commands.put(json.loads(line))
            except ValueError:
                continue
        self.commands.put(None)

    def watch_cluster(self) -> None:
        failures = 0
        while not self.down:
            time.sleep(PROBE_INTERVAL_S)
            reason = probe(self.endpoint)
            failures = failures + 1 if reason else 0
            if failures >= PROBES_TO_DOWN:
                self.down = f"the Ray cluster stopped answering: {reason}"

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        while True:
            if self.down:
                self._lose_all(self.down)
                emit({"event": "down", "error": self.down})
                return 3
            if not self._take_commands():
                return 0
            self._backstop()
            running = [a.generator for a in self.attempts.values()]
            if not running:
                time.sleep(WAIT_S)
                continue
            ready, _ = self.ray.wait(running, num_returns=len(running), timeout=WAIT_S, fetch_local=True)
            if not ready:
                continue
            by_generator = {id(a.generator): a for a in self.attempts.values()}
            for generator in ready:
                attempt = by_generator.get(id(generator))
                if attempt is not None:
                    self._advance(attempt)

    def _take_commands(self) -> bool:
        """Carry out what came on stdin; False once stdin closed and nothing runs."""
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return not (self.closing and not self.attempts)
            if command is None:
                self.closing = True
                for attempt in list(self.attempts.values()):
                    self._cancel(attempt, "the runtime stopped")
                continue
            if command.get("op") == "submit":
                self._submit(command)
            elif command.get("op") == "cancel":
                attempt = self.attempts.get(command.get("id", ""))
                if attempt is not None:
                    self._cancel(attempt, command.get("why") or "cancelled")

    def _submit(self, command: dict[str, Any]) -> None:
        attempt_id = command["id"]
        try:
            spec = inline_inputs(command["spec"])
        except OSError as error:
            # Not the cluster's failure (nothing was sent): the task could not start.
            emit({"id": attempt_id, "event": "end", "outcome": "spawn_error", "error": str(error)})
            return
        try:
            generator = self.remote.options(**command["options"]).remote(spec)
            attempt = _Attempt(attempt_id, generator, command["log_path"], command["result_path"],
                               command["spec"].get("timeout_s"))
        except Exception as error:  # noqa: BLE001 - a bad option, an unwritable log: this attempt only
            emit({"id": attempt_id, "event": "end", "outcome": "lost", "error": f"could not submit: {_first_line(error)}"})
            return
        self.attempts[attempt_id] = attempt

    def _cancel(self, attempt: _Attempt, why: str) -> None:
        if attempt.why_cancelled:
            return
        attempt.why_cancelled = why
        try:
            self.ray.cancel(attempt.generator, force=True)
        except Exception as error:  # noqa: BLE001 - whatever Ray raises, the attempt ends
            self._end(attempt, {"outcome": "lost", "error": f"could not cancel: {_first_line(error)}"})

    def _backstop(self) -> None:
        now = time.monotonic()
        for attempt in list(self.attempts.values()):
            if (attempt.timeout_s is not None and attempt.started_at is not None and not attempt.why_cancelled
                    and now > attempt.started_at + attempt.timeout_s + BACKSTOP_S):
                self._cancel(attempt, "timeout")

    def _advance(self, attempt: _Attempt) -> None:
        """Take every event of ``attempt`` that is ready."""
        while not attempt.ended:
            ready, _ = self.ray.wait([attempt.generator], timeout=0)
            if not ready:
                return
            try:
                ref = next(attempt.generator)
                event = self.ray.get(ref, timeout=60)
            except StopIteration:
                self._end(attempt, {"outcome": "lost", "error": "the Ray task ended without a report"})
                return
            except Exception as error:  # noqa: BLE001 - every Ray error ends the attempt, classified below
                if attempt.why_cancelled:
                    outcome = "timeout" if attempt.why_cancelled == "timeout" else "cancelled"
                    self._end(attempt, {"outcome": outcome, "error": attempt.why_cancelled})
                else:
                    self._end(attempt, {"outcome": "lost", "error": _first_line(error)})
                return
            kind = event.get("event")
            if kind == "output":
                attempt.log.write(event["data"])
            elif kind == "started":
                attempt.started_at = time.monotonic()
                emit({"id": attempt.id, "event": "started", "node": event["node"], "ip": event["ip"]})
            elif kind == "result":
                if attempt.result is None:
                    attempt.result = open(attempt.result_path + ".part", "wb")  # noqa: SIM115 - closed at its end
                attempt.result.write(event["data"])
            elif kind == "end":
                if attempt.result is not None:
                    attempt.result.close()
                    attempt.result = None
                    os.replace(attempt.result_path + ".part", attempt.result_path)
                self._end(attempt, {k: v for k, v in event.items() if k != "event"})

    def _end(self, attempt: _Attempt, fields: dict[str, Any]) -> None:
        if attempt.ended:
            return
        attempt.ended = True
        attempt.log.close()
        if attempt.result is not None:  # cut off (cancelled, lost): no result
            attempt.result.close()
            with contextlib.suppress(OSError):
                os.unlink(attempt.result_path + ".part")
        self.attempts.pop(attempt.id, None)
        emit({"id": attempt.id, "event": "end", **fields})

    def _lose_all(self, why: str) -> None:
        for attempt in list(self.attempts.values()):
            self._end(attempt, {"outcome": "lost", "error": why})


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str]) -> int:
    """``argv``: ``[prog, address, runtime_env JSON, parent pid]``."""
    address, runtime_env, parent = argv[1], json.loads(argv[2]), int(argv[3])
    _die_with_parent(parent)
    endpoint = gcs_endpoint(address)
    reason = probe(endpoint)
    if reason:
        emit({"event": "down", "error": f"the Ray cluster at {address} is unreachable: {reason}"})
        return 3
    try:
        import ray
        import ray.cloudpickle

        import adapters.ray_remote as remote_module
    except ImportError as error:
        emit({"event": "down", "error": f"ray is not installed ({error}): pip install 'orchestrate[ray]'"})
        return 3
    # By value: the nodes need Ray, not orchestrate.
    ray.cloudpickle.register_pickle_by_value(remote_module)
    try:
        ray.init(address=address, runtime_env=runtime_env or None, log_to_driver=False,
                 logging_level="ERROR", configure_logging=False)
    except Exception as error:  # noqa: BLE001 - any failure to connect is the cluster's
        emit({"event": "down", "error": f"the Ray cluster at {address} is unreachable: {_first_line(error)}"})
        return 3
    remote = ray.remote(max_retries=0, retry_exceptions=False)(remote_module.run_attempt)
    bridge = Bridge(ray, remote, endpoint)
    threading.Thread(target=bridge.read_commands, name="ray-bridge-stdin", daemon=True).start()
    threading.Thread(target=bridge.watch_cluster, name="ray-bridge-watchdog", daemon=True).start()
    emit({"event": "up"})
    code = bridge.run()
    sys.stdout.flush()
    # Not ray.shutdown(): with the cluster gone it can hang; the process is leaving anyway.
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
