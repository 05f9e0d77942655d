"""Warm python workers: python tasks run in pre-started interpreters instead of a fresh one each.

A fresh interpreter per task costs ~30 ms; a warm worker serves a task in well under a
millisecond. What stays a process boundary: a task that hangs, leaks or crashes is killed
*with its worker* and every process it started, and a new worker takes the worker's place.

Processes. Each worker is ``<python> -E -c <bootstrap> adapters/pyworker.py`` (see
:mod:`adapters.pyworker`): a clean interpreter, not a fork of the runtime (which runs threads).
``<python>`` is the task's interpreter (:attr:`CallSpec.python`: the project's, see
:mod:`planning.interpreters`); a worker serves only tasks of its own interpreter, and the pool
keeps, per interpreter, as many workers as its tasks ran at once.
Workers are started through the runtime's :class:`ProcessReactor`, so they are ordinary
supervised processes: own session and process group, watched through a pidfd, reaped by the
reactor, their trees killed by ``_terminate`` when they end, sampled by psutil. Each carries a
marker of its own (``ORCHESTRATE_POOL_WORKER``), passed to every task's environment too, so a
kill of a dead worker's tree also finds what escaped it. Workers start lazily, one per python
task running at once (never more than the most that ran at once), and die with the pool.

Threads. One pool thread (``orchestrate-pyworkers``) owns all pool state: it starts workers
(their ``PR_SET_PDEATHSIG`` is tied to the thread that forked them — this one, which lives as
long as the pool, not an executor's thread that a supervisor may restart), writes requests,
reads replies, enforces per-task deadlines and memory limits (one psutil sample of the
worker's tree per ``SAMPLE_INTERVAL_S``) and decides each task's outcome, so a reply, a
deadline, a cancel and a worker's death are ordered by one thread and never race. Other threads
post commands to it through a wakeup pipe. It sleeps in ``selectors`` on the reply pipes with a
timeout of the next deadline or sample; nothing waits by sleeping. Killing the processes a task
left behind runs on a short-lived helper thread (its grace period must not hold up other
tasks); killing a worker is the reactor's job (its own helper threads).

IPC. Two pipes per worker, JSON lines: request (callable, args, kwargs, cwd, full environment,
log path, result path), reply (exit status, CPU time, peak RSS, children left, why to recycle).
A task's output goes straight from the worker to its log file (fds 1 and 2), never through the
pool.

Outcomes, as the reactor reports them (:class:`ProcessResult`, pid = the worker's): a reply is
``exited`` with the callable's status (0, or 1 for ``False``/raise/``sys.exit``); a worker that
dies under a task (``os._exit``, a segfault, ``kill -9`` from outside) is ``exited`` with the
worker's exit code or signal; the pool's own kills are ``timeout``, ``resource_limit`` or
``cancelled``; a cwd or log that cannot be used is ``spawn_error``. Processes a callable started
and left running are killed before its task is reported. A worker is recycled (killed and
replaced) after a task that left threads running, changed process-wide limits or ids, or grew
its RSS or open descriptors past the thresholds below — Celery's ``max_memory_per_child`` idea;
and an idle worker started before a package was installed or removed (a site-packages
directory changed since) is replaced before it gets a task.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import selectors
import signal
import site
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import structlog

from adapters.logcap import CappedLog
from adapters.process import (
    OnExit,
    OnStarted,
    ProcessReactor,
    ProcessSpec,
    StarterStopped,
    environment_for,
    kill_below,
    report_exit,
    report_start,
    tree_rss,
)
from adapters.pycall import result_path
from adapters.wakeup import Wakeup
from domain.outcomes import ProcessResult
from domain.results import inputs_wire

log = structlog.get_logger("orchestrate.pool")

# A worker whose RSS grew by more than this over its own start after a task is recycled.
WORKER_RSS_GROWTH_LIMIT_MB = 256.0
# Likewise for descriptors left open (a callable that opens files and never closes them).
WORKER_FD_GROWTH_LIMIT = 256
# How often a busy worker's tree is measured for its task's memory limit and peak RSS.
SAMPLE_INTERVAL_S = 0.5
# The marker every process of a worker carries (value: the worker's token).
POOL_MARKER = "ORCHESTRATE_POOL_WORKER"
# Environment variables that belong to one attempt: a worker starts without them.
_ATTEMPT_VARIABLES = ("ORCHESTRATE_RUN_ID", "ORCHESTRATE_TASK", "ORCHESTRATE_ATTEMPT", "ORCHESTRATE_ATTEMPT_ID")
# Stopping: how long to wait for the reactor to report the workers killed (grace + SIGKILL wait).
_STOP_WAIT_S = 10.0
# How long an interpreter may take to name its site-packages (once per pool and interpreter).
SITE_QUERY_TIMEOUT_S = 30.0
_PYWORKER = Path(__file__).with_name("pyworker.py")
# As for pycall: run_path keeps orchestrate's home and adapters/ off the worker's sys.path.
_BOOTSTRAP = "import runpy; runpy.run_path(__import__('sys').argv[1], run_name='__main__')"
_READ_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class CallSpec:
    """A python task for a worker: the callable and the process-like frame it runs in (the
    fields :class:`ProcessSpec` has for a process: ``env`` complete, ``marker`` as there)."""

    callable: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]
    cwd: str
    env: tuple[tuple[str, str], ...]
    log_path: str
    timeout_s: float | None = None
    memory_limit_mb: float | None = None
    marker: tuple[str, str] | None = None
    # Upstream results passed as keyword arguments (see domain.results.inputs_wire).
    inputs: tuple[tuple[str, Any], ...] = ()
    # The interpreter of the worker that runs it (the task's project's, or the runtime's own).
    python: str = sys.executable


def call_request(spec: CallSpec) -> dict[str, Any]:
    """What :func:`adapters.pycall.call` is handed for ``spec``; ``inputs`` only when it has
    some, so a task without them costs nothing more."""
    call = {"callable": spec.callable, "args": list(spec.args), "kwargs": dict(spec.kwargs)}
    if spec.inputs:
        call["inputs"] = inputs_wire(spec.inputs)
    return call


@dataclass(eq=False, slots=True)
class _Lease:
    """One task on one worker."""

    id: int
    spec: CallSpec
    on_exit: OnExit
    started: float
    deadline: float | None
    next_sample: float
    outcome: str | None = None  # set when the pool kills the worker for this task (and why)
    result: ProcessResult | None = None  # set by the reply, while leftovers are being killed
    max_rss: int = 0
    members: dict[tuple[int, int], psutil.Process] = field(default_factory=dict)
    log_cap: CappedLog | None = None


@dataclass(eq=False, slots=True)
class _Worker:
    token: str
    python: str  # the interpreter it runs: it serves only tasks of that interpreter
    requests: int  # our end of the request pipe (non-blocking)
    replies: int  # our end of the reply pipe (non-blocking)
    pid: int = -1
    create_time: float = 0.0
    lease: _Lease | None = None
    retiring: bool = False  # killed or recycled by the pool: its end is expected
    ended: bool = False  # its reply pipe closed: it is exiting
    cpu_s: float = 0.0  # CPU time already reported with tasks (a crash reports the rest)
    site_stamp: tuple[int, ...] = ()  # the site-packages directories' mtimes when it started
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)


class WorkerPool:
    """Runs python tasks on warm workers; shaped like :class:`ProcessReactor` for executors.

    ``spawn(spec, on_exit)`` returns the worker's ``(pid, create_time)`` (``(-1, 0.0)`` when it
    cannot run: ``on_exit`` then gets ``spawn_error``); ``on_exit`` is called once, on the pool
    thread, with the task's :class:`ProcessResult`. ``cancel``, ``spawn`` and ``stop`` may be
    called from any thread. ``reactor`` must be running while the pool is.
    """

    def __init__(
        self,
        reactor: ProcessReactor,
        log_path: str = os.devnull,
        *,
        rss_growth_limit_mb: float = WORKER_RSS_GROWTH_LIMIT_MB,
        fd_growth_limit: int = WORKER_FD_GROWTH_LIMIT,
        sample_interval_s: float = SAMPLE_INTERVAL_S,
        grace_s: float = 2.0,
        site_dirs: Sequence[str] | None = None,
        log_cap_bytes: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.log_cap_bytes = log_cap_bytes  # tasks' output logs are cut past this (adapters.logcap)
        self.log_path = log_path  # the workers' own output, between tasks
        self.rss_growth_limit = rss_growth_limit_mb * 1024 * 1024
        self.fd_growth_limit = fd_growth_limit
        self.sample_interval_s = sample_interval_s
        self.grace_s = grace_s
        # Installing or removing a package changes one of these directories: a worker started
        # before that has stale modules (and .pth files) loaded, so it is replaced. Per
        # interpreter; another interpreter's are asked of it once.
        self._site_dirs: dict[str, tuple[str, ...]] = {
            sys.executable: tuple(site_dirs if site_dirs is not None else _site_dirs())}
        self._lock = threading.Lock()  # guards _accepting, _closed and the order of commands
        self._accepting = False
        self._closed = True
        self._wakeup = Wakeup()
        self._thread = threading.Thread(target=self._run, name="orchestrate-pyworkers", daemon=True)
        self._tokens = itertools.count(1)
        self._lease_ids = itertools.count(1)
        # Pool-thread state.
        self._workers: dict[int, _Worker] = {}  # by pid, until the reactor reports its end
        self._idle: list[_Worker] = []  # last in, first out: the warmest worker serves next
        self._wanted: dict[str, int] = {}  # per interpreter, the most tasks that ran at once
        self._reporting = True
        self._stopping = False
        self._stop_deadline = math.inf
        self._selector: selectors.BaseSelector

    # -- any thread ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the pool thread; workers start with the first tasks."""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wakeup.open(), selectors.EVENT_READ, None)
        with self._lock:
            self._accepting, self._closed = True, False
        self._thread.start()

    def spawn(self, spec: CallSpec, on_exit: OnExit) -> tuple[int, float]:
        """Run ``spec`` on an idle worker (a new one if none is idle) and return the worker's
        ``(pid, create_time)``. Raises StarterStopped if the pool is not running."""
        future: Future[tuple[int, float]] = Future()
        self.start_call(spec, lambda pid, create_time: future.set_result((pid, create_time)), on_exit)
        return future.result()

    def start_call(self, spec: CallSpec, on_started: OnStarted, on_exit: OnExit) -> None:
        """Like :meth:`spawn` without waiting: ``on_started`` hears the worker's ``(pid,
        create_time)`` — ``(-1, 0.0)`` when the task could not be given to one — on the pool's
        thread, before ``on_exit`` can be called. Raises StarterStopped if the pool is not running."""
        if not os.path.isdir(spec.cwd):
            # As a process would: it cannot start in a missing directory.
            error = _spawn_error(f"No such file or directory: {spec.cwd!r}")

            def refuse() -> None:
                report_start(on_started, -1, 0.0)
                self._report(on_exit, error)

            self._post_or_raise(refuse)
            return
        self._post_or_raise(functools.partial(self._assign, spec, on_started, on_exit))

    def cancel(self, pid: int, create_time: float | None = None, marker: tuple[str, str] | None = None) -> None:
        """Kill the task running on worker ``pid`` (with its worker and everything it started);
        it is reported ``cancelled``. With ``marker``, only if that task's spec carries it (the
        worker may have moved on to another task). Unknown pids are ignored."""
        self._post(functools.partial(self._cancel, pid, create_time, marker))

    def workers(self) -> list[tuple[int, float]]:
        """``(pid, create_time)`` of every worker the pool has (busy, idle or being killed)."""
        future: Future[list[tuple[int, float]]] = Future()
        self._post_or_raise(lambda: future.set_result([(w.pid, w.create_time) for w in self._workers.values()]))
        return future.result()

    def stop(self, report: bool = True) -> None:
        """Stop taking tasks, kill every worker (and what its task started), join the thread.

        ``report=True``: running tasks are reported ``cancelled``; ``report=False``: nothing is
        reported any more (a runtime going away records its interrupted work itself)."""
        with self._lock:
            if not self._accepting:
                started = not self._closed
            else:
                self._accepting = False
                self._post_locked(functools.partial(self._begin_stop, report))
                started = True
        if started and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def _post(self, command: Callable[[], None]) -> None:
        with self._lock:
            self._post_locked(command)

    def _post_or_raise(self, command: Callable[[], None]) -> None:
        with self._lock:
            if not self._accepting:
                raise StarterStopped("WorkerPool is not running")
            self._post_locked(command)

    def _post_locked(self, command: Callable[[], None]) -> None:
        if self._closed:
            return
        self._wakeup.post(command)

    # -- the pool thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("worker pool crashed")
        finally:
            with self._lock:
                self._accepting, self._closed = False, True
            for command in self._wakeup.take():  # spawns that came too late: they fail (not accepting)
                self._safely(command)
            # Workers still here die with this thread (PR_SET_PDEATHSIG); the reactor reaps them.
            for worker in list(self._workers.values()):
                lease, worker.lease = worker.lease, None
                if lease is not None:
                    self._report_lease(lease, lease.result or self._lost(worker, lease, "cancelled"))
                self._close(worker)
            self._selector.close()
            self._wakeup.close()

    def _loop(self) -> None:
        while True:
            for key, events in self._selector.select(self._timeout()):
                if key.data is None:
                    self._wakeup.drain()
                    continue
                worker = key.data
                self._safely(functools.partial(self._flush if key.fd == worker.requests else self._read, worker))
            for command in self._wakeup.take():
                self._safely(command)
            self._safely(self._watch_leases)
            if self._stopping and (not self._workers or time.monotonic() >= self._stop_deadline):
                return

    def _safely(self, command: Callable[[], None]) -> None:
        """Run one step; a bug in one must not stop the thread every worker's life hangs on."""
        try:
            command()
        except Exception:
            log.exception("worker pool step failed")

    def _timeout(self) -> float | None:
        due = self._stop_deadline if self._stopping else math.inf
        for worker in self._workers.values():
            lease = worker.lease
            if lease is None or lease.outcome is not None or lease.result is not None:
                continue
            due = min(due, lease.next_sample, lease.deadline if lease.deadline is not None else math.inf)
            if lease.log_cap is not None:
                due = min(due, lease.log_cap.next_check)
        return None if due == math.inf else max(0.0, due - time.monotonic())

    # -- workers -------------------------------------------------------------------------------

    def _start_worker(self, python: str) -> _Worker | None:
        """Start a worker of interpreter ``python`` through the reactor (from this thread: see
        the module docstring). It runs pyworker.py by its path, with the standard library only,
        so any python 3 can be a worker without orchestrate installed in it."""
        if not os.access(python, os.X_OK):
            log.warning("python worker could not start: no such interpreter", python=python)
            return None
        req_r, req_w = os.pipe2(os.O_CLOEXEC)
        rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        token = f"{os.getpid()}-{next(self._tokens)}"
        worker = _Worker(token, python, req_w, rep_r, site_stamp=self._site_stamp(python))
        env = tuple((k, v) for k, v in environment_for((), {POOL_MARKER: token}) if k not in _ATTEMPT_VARIABLES)
        spec = ProcessSpec(
            argv=(python, "-E", "-c", _BOOTSTRAP, str(_PYWORKER), str(req_r), str(rep_w), str(os.getpid())),
            cwd="/",
            env=env,
            log_path=self.log_path,
            grace_s=self.grace_s,
            marker=(POOL_MARKER, token),
            pass_fds=(req_r, rep_w),
        )
        try:
            pid, create_time = self.reactor.spawn(spec, functools.partial(self._on_worker_exit, worker))
        except RuntimeError:
            pid, create_time = -1, 0.0
        finally:
            os.close(req_r)
            os.close(rep_w)
        if pid < 0:
            os.close(req_w)
            os.close(rep_r)
            log.warning("python worker could not start", log=self.log_path)
            return None
        os.set_blocking(req_w, False)
        os.set_blocking(rep_r, False)
        worker.pid, worker.create_time = pid, create_time
        self._workers[pid] = worker
        self._selector.register(rep_r, selectors.EVENT_READ, worker)
        return worker

    def _replace(self, python: str) -> None:
        """Keep as many live workers of ``python`` as its tasks ran at once (not counting
        those being killed)."""
        wanted = self._wanted.get(python, 0)
        while not self._stopping and sum(
                not w.retiring and w.python == python for w in self._workers.values()) < wanted:
            worker = self._start_worker(python)
            if worker is None:
                return
            self._idle.append(worker)

    def _retire(self, worker: _Worker, outcome: str | None = None, why: str = "") -> None:
        """Kill ``worker`` and its tree (through the reactor); ``outcome``: what its task ends as."""
        if worker.lease is not None and outcome is not None and worker.lease.outcome is None:
            worker.lease.outcome = outcome
        if worker.retiring:
            return
        worker.retiring = True
        if worker in self._idle:
            self._idle.remove(worker)
        if why:
            log.info("python worker recycled", pid=worker.pid, reason=why)
        self.reactor.cancel(worker.pid, worker.create_time)
        self._replace(worker.python)

    def _on_worker_exit(self, worker: _Worker, result: ProcessResult) -> None:
        """The reactor's report (on its thread) that a worker and its whole tree are gone."""
        self._post(functools.partial(self._worker_exited, worker, result))

    def _worker_exited(self, worker: _Worker, result: ProcessResult) -> None:
        if self._workers.get(worker.pid) is not worker:
            return  # never registered (it could not start)
        lease, worker.lease = worker.lease, None
        self._close(worker)
        if lease is not None:
            if lease.result is not None:  # it returned; it was being cleaned up after
                final = lease.result
            else:
                final = self._lost(worker, lease, lease.outcome or result.outcome, result)
            self._report_lease(lease, final)
        if not worker.retiring:
            log.warning("python worker died", pid=worker.pid, exit_code=result.exit_code, signal=result.signal,
                        busy=lease is not None)
        self._replace(worker.python)

    def _lost(self, worker: _Worker, lease: _Lease, outcome: str, ended: ProcessResult | None = None) -> ProcessResult:
        """The result of a task whose worker ended under it."""
        return ProcessResult(
            pid=worker.pid,
            create_time=worker.create_time,
            exit_code=None if ended is None else ended.exit_code,
            signal=None if ended is None else ended.signal,
            outcome=outcome,
            duration_s=time.monotonic() - lease.started,
            max_rss_bytes=lease.max_rss,
            cpu_s=0.0 if ended is None else max(0.0, ended.cpu_s - worker.cpu_s),
        )

    def _close(self, worker: _Worker) -> None:
        self._workers.pop(worker.pid, None)
        if worker in self._idle:
            self._idle.remove(worker)
        for fd in (worker.requests, worker.replies):
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass
            try:
                os.close(fd)
            except OSError:
                pass
        worker.requests = worker.replies = -1

    # -- tasks ---------------------------------------------------------------------------------

    def _assign(self, spec: CallSpec, on_started: OnStarted, on_exit: OnExit) -> None:
        if self._stopping or self._closed:
            report_start(on_started, -1, 0.0)
            self._report(on_exit, ProcessResult(-1, 0.0, None, None, "cancelled", 0.0, 0, 0.0))
            return
        announced = False
        try:
            try:
                worker = self._idle_worker(spec.python) or self._start_worker(spec.python)
            except OSError as error:  # out of descriptors for its pipes
                worker = None
                log.warning("python worker could not start", error=str(error))
            if worker is None:
                announced = True
                report_start(on_started, -1, 0.0)
                why = ("the python worker could not be started (see the log)" if os.access(spec.python, os.X_OK)
                       else f"the task's python interpreter {spec.python} does not exist or is not executable")
                self._report(on_exit, _spawn_error(why))
                return
            now = time.monotonic()
            lease = _Lease(
                id=next(self._lease_ids),
                spec=spec,
                on_exit=on_exit,
                started=now,
                deadline=None if spec.timeout_s is None else now + spec.timeout_s,
                next_sample=now + self.sample_interval_s,
                log_cap=None if self.log_cap_bytes is None else CappedLog(spec.log_path, self.log_cap_bytes, now),
            )
            worker.lease = lease
            self._wanted[spec.python] = max(self._wanted.get(spec.python, 0), sum(
                w.lease is not None and not w.retiring and w.python == spec.python for w in self._workers.values()))
            log_path = os.path.abspath(spec.log_path)
            request = {
                "id": lease.id,
                "call": call_request(spec),
                "cwd": spec.cwd,
                "env": dict(spec.env) | {POOL_MARKER: worker.token},
                "log_path": log_path,
                "result_path": result_path(log_path),
            }
            worker.outbox += (json.dumps(request) + "\n").encode()
            # Announced before the request can reach the worker, so before any reply can.
            announced = True
            report_start(on_started, worker.pid, worker.create_time)
            self._flush(worker)
        except BaseException:
            if not announced:
                report_start(on_started, -1, 0.0)
                self._report(on_exit, _spawn_error("the python task could not be handed to a worker (see the log)"))
            raise

    def _idle_worker(self, python: str) -> _Worker | None:
        """The warmest idle worker of ``python`` whose packages are current (others are replaced)."""
        mine = [worker for worker in self._idle if worker.python == python]
        stamp = self._site_stamp(python) if mine else ()
        while mine:
            worker = mine.pop()
            self._idle.remove(worker)
            if worker.site_stamp == stamp:
                return worker
            self._retire(worker, why="packages were installed or removed since it started")
        return None

    def _site_stamp(self, python: str) -> tuple[int, ...]:
        if python not in self._site_dirs:
            self._site_dirs[python] = tuple(_site_dirs_of(python))
        stamp = []
        for directory in self._site_dirs[python]:
            try:
                stamp.append(os.stat(directory).st_mtime_ns)
            except OSError:
                stamp.append(-1)
        return tuple(stamp)

    def _flush(self, worker: _Worker) -> None:
        """Write what is pending for ``worker``; the rest when its pipe has room again."""
        if worker.requests < 0:
            return
        try:
            while worker.outbox:
                del worker.outbox[: os.write(worker.requests, worker.outbox)]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            worker.outbox.clear()  # it died: the reactor reports that, and the task with it
        watched = worker.requests in self._selector.get_map()
        if worker.outbox and not watched:
            self._selector.register(worker.requests, selectors.EVENT_WRITE, worker)
        elif watched and not worker.outbox:
            self._selector.unregister(worker.requests)

    def _read(self, worker: _Worker) -> None:
        if worker.replies < 0:
            return
        try:
            data = os.read(worker.replies, _READ_SIZE)
        except BlockingIOError:
            return
        if not data:  # the worker is gone: the reactor reports how, after killing its tree
            self._selector.unregister(worker.replies)
            worker.ended = True  # no new task for it (it cannot read one)
            if worker in self._idle:
                self._idle.remove(worker)
            return
        worker.inbox += data
        while (end := worker.inbox.find(b"\n")) >= 0:
            line = bytes(worker.inbox[:end])
            del worker.inbox[: end + 1]
            try:
                reply = json.loads(line)
            except ValueError:
                # Something else wrote on the pipe: the worker is not to be trusted with more.
                self._retire(worker, "exited", why="a garbled reply")
                return
            self._replied(worker, reply)

    def _replied(self, worker: _Worker, reply: dict[str, Any]) -> None:
        lease = worker.lease
        if lease is None or lease.id != reply.get("id") or lease.outcome is not None or lease.result is not None:
            return  # the pool already decided this task's end (a kill is under way)
        if "error" in reply:
            worker.lease = None
            self._report_lease(lease, _spawn_error(reply["error"]))
            if not worker.ended:
                self._idle.append(worker)
            return
        worker.cpu_s += reply["cpu_s"]
        lease.result = ProcessResult(
            pid=worker.pid,
            create_time=worker.create_time,
            exit_code=reply["code"],
            signal=None,
            outcome="exited",
            duration_s=time.monotonic() - lease.started,
            max_rss_bytes=max(lease.max_rss, reply["peak_rss"]),
            cpu_s=reply["cpu_s"],
        )
        why = reply["recycle"]
        if not why and reply["rss_growth"] > self.rss_growth_limit:
            why = f"its RSS grew by {reply['rss_growth'] // (1024 * 1024)} MiB"
        if not why and reply["fd_growth"] > self.fd_growth_limit:
            why = f"{reply['fd_growth']} more descriptors open"
        if reply["children"]:
            # Background processes must not outlive their task: kill them before reporting it.
            def work() -> None:
                try:
                    kill_below(worker.pid, worker.create_time, self.grace_s)
                except Exception:
                    log.exception("killing a task's leftovers failed", pid=worker.pid)
                self._post(functools.partial(self._cleaned, worker, lease, why))

            threading.Thread(target=work, name=f"orchestrate-kill-{worker.pid}", daemon=True).start()
            return
        self._cleaned(worker, lease, why)

    def _cleaned(self, worker: _Worker, lease: _Lease, why: str) -> None:
        if worker.lease is not lease:
            return  # the worker died meanwhile; its task was reported then
        worker.lease = None
        assert lease.result is not None
        self._report_lease(lease, lease.result)
        if why or self._stopping:
            self._retire(worker, why=why)
        elif not worker.ended:
            self._idle.append(worker)

    def _cancel(self, pid: int, create_time: float | None, marker: tuple[str, str] | None) -> None:
        worker = self._workers.get(pid)
        if worker is None or create_time not in (None, worker.create_time):
            return
        lease = worker.lease
        if lease is None or lease.outcome is not None or lease.result is not None:
            return
        if marker is not None and lease.spec.marker != marker:
            return
        self._retire(worker, "cancelled")

    def cancel_marked(self, marker: tuple[str, str]) -> None:
        """Kill the task whose spec carries ``marker`` (with its worker and everything it
        started); it is reported ``cancelled``. Nothing happens when no running task carries it."""

        def command() -> None:
            for worker in list(self._workers.values()):
                if worker.lease is not None and worker.lease.spec.marker == marker:
                    self._cancel(worker.pid, worker.create_time, marker)

        self._post(command)

    def _watch_leases(self) -> None:
        """Deadlines and memory limits of the running tasks."""
        now = time.monotonic()
        for worker in list(self._workers.values()):
            lease = worker.lease
            if lease is None or lease.outcome is not None or lease.result is not None:
                continue
            if lease.deadline is not None and now >= lease.deadline:
                self._retire(worker, "timeout")
                continue
            if lease.log_cap is not None and now >= lease.log_cap.next_check:
                lease.log_cap.check(now)
            if now < lease.next_sample:
                continue
            lease.next_sample = now + self.sample_interval_s
            rss, lease.members = tree_rss(worker.pid, worker.create_time, lease.members)
            lease.max_rss = max(lease.max_rss, rss)
            limit = lease.spec.memory_limit_mb
            if limit is not None and rss > limit * 1024 * 1024:
                self._retire(worker, "resource_limit")

    def _begin_stop(self, report: bool) -> None:
        self._stopping = True
        self._reporting = report
        self._stop_deadline = time.monotonic() + _STOP_WAIT_S
        for worker in list(self._workers.values()):
            self._retire(worker, "cancelled")

    def _report_lease(self, lease: _Lease, result: ProcessResult) -> None:
        if lease.log_cap is not None:
            lease.log_cap.finish()
        self._report(lease.on_exit, result)

    def _report(self, on_exit: OnExit, result: ProcessResult) -> None:
        if self._reporting:
            report_exit(on_exit, result)


def _site_dirs() -> list[str]:
    """This interpreter's site-packages directories (a worker runs the same interpreter)."""
    paths = sysconfig.get_paths()
    found = [paths[key] for key in ("purelib", "platlib") if key in paths]
    found += site.getsitepackages()
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(os.path.realpath(p) for p in found) if os.path.isdir(d)]


# Printed by another interpreter: its site-packages directories, as _site_dirs() finds ours.
_SITE_DIRS_SCRIPT = """\
import json, os, site, sysconfig
paths = sysconfig.get_paths()
found = [paths[key] for key in ("purelib", "platlib") if key in paths]
found += getattr(site, "getsitepackages", lambda: [])()
if site.ENABLE_USER_SITE:
    found.append(site.getusersitepackages())
print(json.dumps([d for d in dict.fromkeys(os.path.realpath(p) for p in found) if os.path.isdir(d)]))
"""


def _site_dirs_of(python: str) -> list[str]:
    """``python``'s site-packages directories (asked of it, once per pool); none when it cannot
    say, and then its workers are not replaced after an install."""
    if python == sys.executable:
        return _site_dirs()
    try:
        # Its own process group (in our session: see ProcessReactor), killed afterwards: a
        # "python" that is a script may leave children behind, or hang until the timeout.
        with subprocess.Popen([python, "-E", "-c", _SITE_DIRS_SCRIPT], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                              process_group=0) as asked:
            try:
                out, _ = asked.communicate(timeout=SITE_QUERY_TIMEOUT_S)
            finally:
                _kill_group(asked.pid)
        if asked.returncode != 0:
            raise ValueError(f"exit code {asked.returncode}")
        found = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        log.warning("could not ask an interpreter for its site-packages", python=python)
        return []
    return [entry for entry in found if isinstance(entry, str)]


def _kill_group(group: int) -> None:
    """Kill what is left of process group ``group`` and reap those of them that are ours (as
    subreaper, orphans of it come to us; the reactor leaves children of our session alone)."""
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        return
    while True:
        try:
            os.waitpid(-group, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _spawn_error(text: str) -> ProcessResult:
    return ProcessResult(-1, 0.0, None, None, "spawn_error", 0.0, 0, 0.0, text)
