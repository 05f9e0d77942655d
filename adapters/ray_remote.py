"""What runs on a Ray node for one attempt: :func:`run_attempt`, a Ray streaming-generator task.

Shipped to the cluster *by value* (the bridge registers this module with Ray's cloudpickle), so
a node needs Python and Ray, not orchestrate: this module imports only the standard library,
and Ray only inside the task.

One attempt, on the node:

- The Ray worker starts a *session keeper* (``python -c`` :data:`KEEPER_SOURCE`), which
  detaches from it at once (fork, parent exits, ``setsid``): Ray SIGKILLs the children of a
  worker it kills, and the keeper must outlive the worker to clean up after it. The keeper is
  a child subreaper holding one end of a *lifeline* pipe whose other end only the worker
  holds: end of file on it means the worker is gone. The keeper starts the task's command in a
  session of its own, its stdout and stderr on a pipe the worker reads. Every orphan of the command's tree (a grandchild that called ``setsid`` and whose
  parent exited included) re-parents to the keeper, so the keeper's descendants *are* the
  task's processes.
- The keeper kills its whole tree (SIGTERM, a grace period, SIGKILL) when the command exits
  (what it left running in the background), when it gets SIGTERM (from the worker, on a
  timeout or memory limit), or when the lifeline ends (``ray.cancel(force=True)`` killed the
  worker, or the node is going down) — and then reports how the command ended (exit status, peak RSS, CPU time) on a
  status pipe.
- The worker yields events to the driver as they happen: ``started`` (node id and address),
  ``output`` (chunks of what the command printed, at most :data:`CHUNK_BYTES` each), then
  ``result`` chunks (a python task's return value, or what a shell command wrote to
  ``$ORCHESTRATE_OUTPUT``, when there is one: any size, in order) and one ``end`` (outcome, exit
  code or signal, peak RSS, CPU seconds).

A ``python`` task's command is :mod:`adapters.pycall` (its source travels in the spec) run by
the task's interpreter (``python`` in the spec, the same path on the node; the worker's own
for steps orchestrate built), so a callable is judged exactly as a local ``"isolation":
"process"`` task: traceback in the log, ``False`` fails, leaving the interpreter fails, a
result JSON cannot hold fails naming its type. An interpreter missing on the node ends the
attempt ``spawn_error_python`` (the plan's fault) before anything starts. The upstream results
a task takes arrive in the spec, as values (no path on the runtime's machine means anything
here): a python task gets each as a keyword argument, a shell task a JSON file of them in
``$ORCHESTRATE_INPUTS``; both are written to the attempt's scratch directory on the node.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CHUNK_BYTES = 256 * 1024
SAMPLE_INTERVAL_S = 0.5

# The keeper: argv[1] is its JSON spec. It forks at once and the parent exits, so the keeper is
# not a child of the Ray worker: Ray SIGKILLs a dying worker's children (its
# kill_child_processes_on_worker_exit), which would kill the keeper before it could clean up.
KEEPER_SOURCE = r"""
import ctypes, json, os, select, shutil, signal, subprocess, sys, time

class Stop(Exception):
    pass

def stop(signum, frame):
    raise Stop()

def prctl(option, value):
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False

def descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found

def reap():
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == main_pid:
            ended.append((status, usage))

def kill_tree(grace):
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        targets = descendants(os.getpid())
        if not targets:
            return
        for pid in targets:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap()
            if not descendants(os.getpid()):
                return
            time.sleep(0.02)

spec = json.loads(sys.argv[1])
status_fd, lifeline = spec["status_fd"], spec["lifeline_fd"]
if os.fork():
    os._exit(0)
os.setsid()  # out of the worker's group and session: nothing aimed at the worker hits us
signal.signal(signal.SIGTERM, stop)
prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: the task's orphans come to us
main_pid = -1
ended = []
report = {"killed": False}
orphaned = False
try:
    os.write(status_fd, (json.dumps({"pid": os.getpid()}) + "\n").encode())
    try:
        child = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=dict(spec["env"]), stdin=subprocess.DEVNULL,
                                 start_new_session=True, close_fds=True)
    except OSError as error:
        report["spawn_error"] = "%s: %s" % (error.strerror or error, spec["argv"][0] if error.filename is None else error.filename)
        report["cwd_exists"] = os.path.isdir(spec["cwd"])
        raise Stop()
    main_pid = child.pid
    exited = os.pidfd_open(main_pid)
    while not ended:
        # The lifeline's other end is the worker's: end of file means the worker died
        # (ray.cancel(force=True), a crash, its node going away).
        ready, _, _ = select.select([exited, lifeline], [], [])
        if lifeline in ready and not os.read(lifeline, 1):
            orphaned = True
            raise Stop()
        reap()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the tree is killed below anyway
except Stop:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    report["killed"] = True
kill_tree(spec["grace_s"])
reap()
if ended:
    status, usage = ended[0]
    report["exit_code"] = os.waitstatus_to_exitcode(status)
    report["max_rss_bytes"] = usage.ru_maxrss * 1024
    report["cpu_s"] = usage.ru_utime + usage.ru_stime
try:
    os.write(status_fd, json.dumps(report).encode())
except OSError:
    pass  # the worker is gone: nobody to tell
if orphaned:  # nor to clean up the attempt's scratch directory (its inputs, its result)
    shutil.rmtree(spec["scratch"], ignore_errors=True)
"""

# A python task: pycall.py's source written to a file on the node, run like the local adapter
# runs it (run_path, so the callable's cwd stays first on sys.path).
_PYCALL_BOOTSTRAP = "import runpy; runpy.run_path(__import__('sys').argv[1], run_name='__main__')"


def _tree_rss(root: int) -> int:
    """The RSS of ``root`` and its descendants, in bytes (0 for what cannot be read)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    children.setdefault(int(handle.read().rsplit(b")", 1)[1].split()[1]), []).append(int(name))
            except (OSError, IndexError, ValueError):
                continue
    total, todo, page = 0, [root], os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


class _StatusPipe:
    """The keeper's status pipe: a first line with its pid, then (at its exit) its report."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def first(self) -> dict:
        while b"\n" not in self.buffer:
            data = os.read(self.fd, 4096)
            if not data:
                raise RuntimeError("the session keeper ended before it started the task")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def rest(self) -> dict:
        while data := os.read(self.fd, 65536):
            self.buffer += data
        return json.loads(self.buffer or b"{}")

    def close(self) -> None:
        os.close(self.fd)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


def _node() -> tuple[str, str]:
    import ray

    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


def _venv_bin(interpreter: str) -> str | None:
    """The ``bin`` directory of the virtualenv ``interpreter`` belongs to on this node, or None
    (as :func:`planning.interpreters.venv_bin`, which this module cannot import)."""
    directory = os.path.dirname(interpreter)
    if os.path.isfile(os.path.join(os.path.dirname(directory), "pyvenv.cfg")):
        return directory
    return None


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _environment(spec: dict) -> list[tuple[str, str]]:
    """The node's environment, the task's on top; when the task's interpreter is a
    virtualenv's, its ``bin`` first on PATH (as if activated, as the local adapters do).
    Nothing of the Ray worker's own is added."""
    env = dict(os.environ)
    env.update(dict(spec["env"]))
    first = _venv_bin(spec["python"]) if spec.get("python") else None
    if first is not None:
        env["PATH"] = os.pathsep.join(p for p in (first, env.get("PATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return sorted(env.items())


def _write(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _python_inputs(scratch: str, inputs: list) -> list[list]:
    """The inputs as :mod:`adapters.pycall` reads them, each in a file of its own (not on the
    command line, which holds at most 128 KiB per argument)."""
    return [[name, None, _write(os.path.join(scratch, f"input-{index}.json"), text)]
            for index, (name, text) in enumerate(inputs)]


def _shell_inputs(scratch: str, inputs: list) -> str:
    """The file ``$ORCHESTRATE_INPUTS`` names: one JSON object ``{name: value}``, each value
    spliced in as it came (JSON already), not decoded and encoded again."""
    body = ",".join(f"{json.dumps(name)}:{text}" for name, text in inputs)
    return _write(os.path.join(scratch, "inputs.json"), "{" + body + "}")


def _unstarted(node: str, ip: str, outcome: str, error: str):
    """The events of an attempt that could not start on this node (a generator: Ray drives a
    generator task with ``send``, which ``yield from`` passes on)."""
    yield {"event": "started", "node": node, "ip": ip, "pid": -1}
    yield {"event": "end", "outcome": outcome, "exit_code": None, "signal": None, "max_rss_bytes": 0,
           "cpu_s": 0.0, "duration_s": 0.0, "error": error}


def run_attempt(spec: dict):
    """A Ray generator task: run one attempt described by ``spec`` and yield its events.

    ``spec``: ``kind`` (``shell``: ``command``; ``python``: ``callable``, ``args``, ``kwargs``,
    ``pycall_source``), ``task`` (its key, for messages), ``cwd``, ``env`` (pairs added to the
    node's environment), ``python`` (the task's interpreter; None: this worker's), ``inputs``
    (``[[name, json text], ...]``), ``timeout_s`` and ``memory_limit_mb`` (None: none),
    ``grace_s``.
    """
    node, ip = _node()
    python = spec.get("python") or sys.executable
    if spec["kind"] == "python" and not _runnable(python):
        yield from _unstarted(node, ip, "spawn_error_python", (
            f"task {spec.get('task')}: its python {python} is not an interpreter on this Ray node; "
            "install it there at that path, or set the task's (workstream's, plan's) \"python\" to one the node has"))
        return
    # The attempt's files on the node (pycall, inputs, result); the keeper removes them if this
    # worker is killed (a cancel) before it can.
    scratch = tempfile.mkdtemp(prefix="orchestrate-ray-")
    try:
        yield from _run(spec, node, ip, python, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(spec: dict, node: str, ip: str, python: str, scratch: str):
    env = _environment(spec)
    inputs = spec.get("inputs") or []
    if spec["kind"] == "python":
        pycall = os.path.join(scratch, "pycall.py")
        _write(pycall, spec["pycall_source"])
        result_file = os.path.join(scratch, "result.json")
        env.append(("ORCHESTRATE_RESULT_PATH", result_file))
        request = {"callable": spec["callable"], "args": spec["args"], "kwargs": spec["kwargs"]}
        if inputs:
            request["inputs"] = _python_inputs(scratch, inputs)
        argv = [python, "-c", _PYCALL_BOOTSTRAP, pycall, json.dumps(request)]
    else:
        result_file = os.path.join(scratch, "output.json")
        env.append(("ORCHESTRATE_OUTPUT", result_file))
        if inputs:
            env.append(("ORCHESTRATE_INPUTS", _shell_inputs(scratch, inputs)))
        argv = ["/bin/sh", "-c", spec["command"]]
    out_read, out_write = os.pipe()
    status_read, status_write = os.pipe()
    lifeline_read, lifeline_write = os.pipe()  # we keep the write end, and never write
    keeper_spec = {"argv": argv, "cwd": spec["cwd"], "env": env, "status_fd": status_write,
                   "lifeline_fd": lifeline_read, "grace_s": spec.get("grace_s", 2.0), "scratch": scratch}
    started = time.monotonic()
    try:
        subprocess.run(
            [sys.executable, "-c", KEEPER_SOURCE, json.dumps(keeper_spec)],
            stdin=subprocess.DEVNULL, stdout=out_write, stderr=out_write, pass_fds=(status_write, lifeline_read),
            check=True,
        )
    finally:
        os.close(out_write)
        os.close(status_write)
        os.close(lifeline_read)
    status = _StatusPipe(status_read)
    keeper = int(status.first()["pid"])
    yield {"event": "started", "node": node, "ip": ip, "pid": keeper}
    outcome = "exited"
    limit = spec.get("memory_limit_mb")
    deadline = None if spec.get("timeout_s") is None else started + float(spec["timeout_s"])
    peak = 0
    next_sample = started
    try:
        while True:
            now = time.monotonic()
            if outcome == "exited" and deadline is not None and now >= deadline:
                outcome = "timeout"
                _signal(keeper, signal.SIGTERM)
            if outcome == "exited" and limit is not None and now >= next_sample:
                next_sample = now + SAMPLE_INTERVAL_S
                peak = max(peak, _tree_rss(keeper))
                if peak > limit * 1024 * 1024:
                    outcome = "resource_limit"
                    _signal(keeper, signal.SIGTERM)
            waits = [SAMPLE_INTERVAL_S]
            if outcome == "exited" and deadline is not None:
                waits.append(max(0.0, deadline - now))
            ready, _, _ = select.select([out_read], [], [], min(waits))
            if not ready:
                continue
            data = os.read(out_read, CHUNK_BYTES)
            if not data:
                break
            yield {"event": "output", "data": data}
        report = status.rest()
    finally:
        # Reached early only when this generator is closed (a cancel): the keeper sees the
        # lifeline end with us and kills the tree.
        os.close(out_read)
        status.close()
        os.close(lifeline_write)
    # Only a process that ran to its end may have left a result: the callable returned, or the
    # command wrote one. It goes back as it is (the runtime judges it), whatever its size.
    try:
        with open(result_file, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield {"event": "result", "data": chunk}
    except FileNotFoundError:
        pass
    if report.get("spawn_error"):
        outcome = "spawn_error" if report.get("cwd_exists", True) else "spawn_error_cwd"
    exit_code = report.get("exit_code")
    yield {
        "event": "end",
        "outcome": outcome,
        "exit_code": exit_code if exit_code is None or exit_code >= 0 else None,
        "signal": -exit_code if exit_code is not None and exit_code < 0 else None,
        "max_rss_bytes": max(peak, int(report.get("max_rss_bytes", 0))),
        "cpu_s": float(report.get("cpu_s", 0.0)),
        "duration_s": time.monotonic() - started,
        "error": report.get("spawn_error", ""),
    }
