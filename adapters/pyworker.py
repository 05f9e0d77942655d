"""A warm python worker: one process that runs python tasks one after another (see
:mod:`adapters.pool`, which starts and supervises it).

Started by the pool as ``python -E -c <run_path bootstrap> pyworker.py REQ_FD REPLY_FD PARENT``
— a fresh interpreter, never a fork of the runtime (which runs threads); ``run_path`` so that
neither orchestrate's home nor ``adapters/`` is on ``sys.path`` (they would shadow a project's
own modules). It reads one JSON request per line from ``REQ_FD``, runs the callable in this
process exactly as :func:`adapters.pycall.call` does (the same function, loaded from its file),
and writes one JSON reply per line to ``REPLY_FD``. End of file on ``REQ_FD`` ends it.

What a task gets, and what is put back afterwards:

- ``cwd``; the complete environment (``os.environ`` replaced, so processes the callable starts
  carry it, attempt markers included); ``sys.path`` = the cwd, the env's ``PYTHONPATH``, the
  interpreter's own entries, orchestrate's home; ``sys.dont_write_bytecode`` from the env;
- fds 1 and 2 on its own log (``dup2``), ``sys.stdout``/``sys.stderr`` rebound to unbuffered
  streams on them, ``sys.stdin`` on /dev/null;
- afterwards: environment, cwd, ``sys.path``, ``sys.argv``, std streams, signal handlers, mask
  and interval timers, umask, recursion limit and the garbage collector's switch restored; every module loaded from outside the standard library and
  site-packages (the project's, orchestrate's) dropped from ``sys.modules``, so an edited module
  is imported afresh by the next task; warm modules the next task's project would shadow (its
  own ``yaml.py``) dropped before it starts;
- the reply says what the pool must know: exit status (``pycall`` semantics), CPU time, peak
  RSS (the kernel's high-water mark, reset before each task), whether children are left
  (the pool kills them) and whether this worker should be recycled: threads left running,
  resource limits / ids / priority changed, RSS or open descriptors grown past the pool's
  thresholds, or a ``BaseException`` that is not ``SystemExit``.

Linux: the worker asks for SIGKILL when the pool thread that started it ends
(``PR_SET_PDEATHSIG``; a ``kill -9``'d runtime leaves no worker) and is a child subreaper
(``PR_SET_CHILD_SUBREAPER``), so whatever a task starts — daemons that double-fork or call
``setsid`` included — stays below it, where the pool finds and kills it.

Imports only the standard library, like :mod:`adapters.pycall`.
"""

from __future__ import annotations

import _signal
import ctypes
import gc
import importlib.machinery
import importlib.util
import io
import json
import os
import resource
import signal
import site
import sys
import sysconfig
import threading
import traceback

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PAGE = os.sysconf("SC_PAGE_SIZE")
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_RLIMITS = tuple(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_"))
_SUFFIXES = tuple(importlib.machinery.all_suffixes())
_PYCALL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pycall.py")


def _load_pycall():
    """adapters.pycall, from its file (orchestrate is not on this interpreter's sys.path)."""
    spec = importlib.util.spec_from_file_location("_orchestrate_pycall", _PYCALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _warm_roots() -> tuple[str, ...]:
    """Directories whose modules stay loaded between tasks: the standard library and every
    site-packages (this interpreter's, its base's, the user's)."""
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    try:
        roots.update(site.getsitepackages())
    except AttributeError:
        pass
    user = getattr(site, "USER_SITE", None)
    if user:
        roots.add(user)
    return tuple(sorted({os.path.join(os.path.realpath(root), "") for root in roots}))


def _rss() -> int:
    with open("/proc/self/statm", "rb") as handle:
        return int(handle.read().split()[1]) * _PAGE


def _peak_rss() -> int:
    """This process's RSS high-water mark (VmHWM), in bytes."""
    with open("/proc/self/status", "rb") as handle:
        for line in handle:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    except OSError:
        pass


def _children_peak(before: int) -> int:
    """The peak RSS of a child this task started and waited for (the largest of all children
    waited for so far: only news when it grew during the task), in bytes; else 0."""
    now = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return now * 1024 if now > before else 0


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _reap() -> None:
    """Reap every dead child (this worker is the subreaper of what its tasks started)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _has_children() -> bool:
    """Whether any process is still below this one (zombies reaped first)."""
    _reap()
    try:
        threads = os.listdir("/proc/self/task")
    except OSError:
        return True
    for tid in threads:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as handle:
                if handle.read().strip():
                    return True
        except OSError:
            continue
    return False


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _identity() -> tuple:
    """What a callable may change about the whole process that cannot be put back: resource
    limits, ids, priority. A worker whose identity changed is recycled."""
    limits = []
    for limit in _RLIMITS:
        try:
            limits.append(resource.getrlimit(limit))
        except (OSError, ValueError):
            limits.append(None)
    try:
        priority = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        priority = None
    return (tuple(limits), os.getresuid(), os.getresgid(), tuple(os.getgroups()), priority)


class Worker:
    def __init__(self, requests: int, replies: int) -> None:
        self.pycall = _load_pycall()
        self.requests = os.fdopen(requests, "rb", buffering=1 << 16)
        self.replies = replies
        # Between tasks fds 1 and 2 are the worker's own log (what the pool gave it).
        self.own_out = os.dup(1)
        self.own_err = os.dup(2)
        os.set_inheritable(self.own_out, False)
        os.set_inheritable(self.own_err, False)
        self.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                       errors="backslashreplace", write_through=True)
        self.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                       errors="backslashreplace", write_through=True)
        self.stdin = open(os.devnull, encoding="utf-8")
        sys.stdout, sys.stderr, sys.stdin = self.stdout, self.stderr, self.stdin
        self.home = self.pycall.orchestrate_home()
        # '' (the -c cwd entry) goes: each task gets its absolute cwd first instead.
        self.base_path = [entry for entry in sys.path if entry not in ("", os.getcwd())]
        self.base_argv = list(sys.argv)
        self.base_env = dict(os.environ)
        self.request_env: dict[str, str] = {}
        self.task_environ: dict[bytes, bytes] | None = None
        self.base_cwd = os.getcwd()
        self.base_umask = os.umask(0o022)
        os.umask(self.base_umask)
        self.base_recursion = sys.getrecursionlimit()
        self.base_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        # _signal: the C module, without the enum conversions (62 signals are checked per task).
        self.base_signals = {}
        for signum in signal.valid_signals():
            try:
                handler = _signal.getsignal(signum)
            except (OSError, ValueError):
                continue
            if handler is not None:
                self.base_signals[signum] = handler
        self.warm_roots = _warm_roots()
        self.warm: set[str] = set(sys.modules)  # loaded by now: the worker's own, always kept
        self.startup = frozenset(self.warm)
        self.pid = os.getpid()
        self.identity = _identity()
        self.base_rss = _rss()
        self.base_fds = _fd_count()

    # -- the loop ------------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            line = self.requests.readline()
            if not line:
                return
            request = json.loads(line)
            reply = self.run(request)
            data = (json.dumps(reply) + "\n").encode()
            view = memoryview(data)
            while view:
                view = view[os.write(self.replies, view):]

    def run(self, request: dict) -> dict:
        _reap()
        cpu = _cpu()
        _reset_peak_rss()
        children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        reply = {"id": request["id"]}
        try:
            log_fd = os.open(request["log_path"], _LOG_FLAGS, 0o644)
        except FileNotFoundError:
            try:
                os.makedirs(os.path.dirname(request["log_path"]) or ".", exist_ok=True)
                log_fd = os.open(request["log_path"], _LOG_FLAGS, 0o644)
            except OSError as error:
                return reply | {"error": _error_text(error)}
        except OSError as error:
            return reply | {"error": _error_text(error)}
        try:
            os.chdir(request["cwd"])
        except OSError as error:
            os.close(log_fd)
            return reply | {"error": _error_text(error)}
        recycle = ""
        try:
            self.enter(request, log_fd)
            try:
                code = self.pycall.call(request["call"], request["result_path"])
            except BaseException:  # KeyboardInterrupt and the like: this interpreter is suspect
                traceback.print_exc()
                code, recycle = 1, "the callable raised a BaseException"
            if os.getpid() != self.pid:
                # A child the callable forked returned here: it must not serve the pool's pipes.
                os._exit(code)
        finally:
            self.leave()
        threads = _thread_count()
        if threads > 1 and not recycle:
            recycle = f"{threads - 1} thread(s) left running"
        if not recycle and _identity() != self.identity:
            recycle = "the callable changed process limits, ids or priority"
        return reply | {
            "code": code,
            "cpu_s": max(0.0, _cpu() - cpu),
            "peak_rss": max(_peak_rss(), _children_peak(children_peak)),
            "rss_growth": _rss() - self.base_rss,
            "fd_growth": _fd_count() - self.base_fds,
            "children": _has_children(),
            "recycle": recycle,
        }

    # -- per-task state ------------------------------------------------------------------------

    def enter(self, request: dict, log_fd: int) -> None:
        env = self.request_env = request["env"]
        _set_environ(env, self.base_env)
        self.task_environ = _environ_state()
        cwd = os.getcwd()
        extra = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
        project = [cwd] + [os.path.join(cwd, entry) for entry in extra]
        sys.path[:] = [*project, *self.base_path, self.home]
        sys.argv[:] = self.base_argv
        sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
        self.forget_shadowed(project)
        # Directory listings of the project's path entries are read afresh (new files appear).
        for entry in (*project, self.home):
            sys.path_importer_cache.pop(entry, None)
        try:
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
        finally:
            os.close(log_fd)
        sys.stdout, sys.stderr, sys.stdin = self.stdout, self.stderr, self.stdin
        self.pycall.forget_result(request["result_path"])

    def leave(self) -> None:
        for stream in (sys.stdout, sys.stderr, self.stdout, self.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - a task may leave any object as sys.stdout; the worker must go on
                pass
        sys.stdout, sys.stderr, sys.stdin = self.stdout, self.stderr, self.stdin
        os.dup2(self.own_out, 1)
        os.dup2(self.own_err, 2)
        if self.task_environ is not None and _environ_state() == self.task_environ:
            _set_environ(self.base_env, self.request_env)  # untouched by the task: undo ours
        else:
            _set_environ(self.base_env, dict(os.environ))
        try:
            os.chdir(self.base_cwd)
        except OSError:
            os.chdir("/")
        sys.path[:] = self.base_path
        sys.argv[:] = self.base_argv
        sys.dont_write_bytecode = False
        for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
            signal.setitimer(timer, 0)  # an alarm set by the task must not go off in the next one
        if not gc.isenabled():
            gc.enable()
        os.umask(self.base_umask)
        sys.setrecursionlimit(self.base_recursion)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.base_mask)
        for signum, handler in self.base_signals.items():
            try:
                if _signal.getsignal(signum) is not handler:
                    signal.signal(signum, handler)
            except (OSError, ValueError, TypeError):
                continue
        self.forget_project_modules()

    def forget_project_modules(self) -> None:
        """Drop every module not loaded from the standard library or a site-packages."""
        for name, module in list(sys.modules.items()):
            if name in self.warm:
                continue
            if self.is_warm(module):
                self.warm.add(name)
            else:
                del sys.modules[name]

    def is_warm(self, module: object) -> bool:
        locations = []
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            locations.append(file)
        else:
            path = getattr(module, "__path__", None)  # a namespace package: its portions
            if path is not None:
                try:
                    locations.extend(entry for entry in path if isinstance(entry, str))
                except TypeError:
                    return False
                if not locations:
                    return False
        for location in locations:
            real = os.path.realpath(location)
            if not real.startswith(self.warm_roots):
                return False
        return True  # in the warm roots, or nowhere at all (built-in, frozen, made in memory)

    def forget_shadowed(self, project: list[str]) -> None:
        """Drop the warm modules that this task's project directories shadow: a fresh
        interpreter would import the project's own ``yaml.py``, not the site-packages one."""
        names = set()
        for directory in project:
            try:
                entries = os.scandir(directory)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    stem, dot, _ = entry.name.partition(".")
                    if dot and entry.name.endswith(_SUFFIXES):
                        names.add(stem)
                    elif not dot and entry.is_dir() and os.path.exists(os.path.join(entry.path, "__init__.py")):
                        names.add(entry.name)
        shadowed = {name for name in names & self.warm if name not in self.startup}
        if not shadowed:
            return
        self.warm -= {name for name in self.warm if name.partition(".")[0] in shadowed}
        for name in list(sys.modules):
            if name.partition(".")[0] in shadowed:
                del sys.modules[name]


def _set_environ(env: dict[str, str], current: dict[str, str]) -> None:
    """Make ``os.environ`` (and the C environment children inherit) ``env``, given that it is
    ``current`` now: only what differs is touched (most of it is the same for every task)."""
    for name in current.keys() - env.keys():
        del os.environ[name]
    for name, value in env.items():
        if current.get(name) != value:
            os.environ[name] = value


def _environ_state() -> dict[bytes, bytes] | None:
    """A cheap copy of ``os.environ`` to tell later whether anything changed it (its encoded
    mapping, copied in C); None where that is not available."""
    data = getattr(os.environ, "_data", None)
    return dict(data) if isinstance(data, dict) else None


def _error_text(error: OSError) -> str:
    if error.strerror:
        return error.strerror if error.filename is None else f"{error.strerror}: {error.filename!r}"
    return str(error)


def main(argv: list[str]) -> int:
    requests, replies, parent = (int(arg) for arg in argv[-3:])
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the runtime died before the request above took effect
        return 1
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    os.set_inheritable(requests, False)
    os.set_inheritable(replies, False)
    Worker(requests, replies).serve()
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    # Not sys.exit: atexit handlers that tasks registered must not run in an unknown state.
    sys.stdout.flush()
    os._exit(code)
