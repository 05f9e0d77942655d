"""Process supervision for executor actors: start tools, watch them, end whole process trees.

One :class:`ProcessReactor` thread watches every running tool through Linux pidfds, so the actor
that started a process never blocks its mailbox on it. Each process runs in its own session and
process group; when it times out, exceeds its memory limit, is cancelled, or simply exits, every
process left in its tree is killed before the caller is told (:func:`kill_tree`).

With ``adopt_orphans`` the reactor makes this process a child subreaper (Linux ``prctl``): a
task's orphans, including grandchildren that called ``setsid``, re-parent to us instead of
init, so they stay findable by a walk of our own children, and the reactor reaps them.

A process is identified by ``(pid, create_time)`` (``create_time`` as :mod:`psutil` reports it),
never by pid alone: pids are reused, and quickly (``pid_max`` can be as low as 32768).

Linux only (``os.pidfd_open``, ``signal.pidfd_send_signal``, ``/proc``).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import queue
import resource
import select
import selectors
import signal
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import psutil
import structlog

from adapters.logcap import CappedLog
from adapters.spawn import spawn
from adapters.wakeup import Wakeup
from domain.outcomes import ProcessResult

log = structlog.get_logger("orchestrate.process")

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# After SIGKILL only uninterruptible sleep (D state) delays death; don't wait for that forever.
_KILL_WAIT_S = 5.0
# Looking for a finished process's leftovers takes a /proc scan (~0.2 ms for 70 processes).
# Under a burst of short processes, batch the scans: at most one per this interval.
_SWEEP_INTERVAL_S = 0.02
# A tree killed again right after a kill is still growing (a process forked, or left its group
# with setsid, after the snapshot). A few rounds catch that; a fork bomb is not chased forever.
_KILL_ROUNDS = 5
_PR_SET_CHILD_SUBREAPER = 36
# Tools run in sessions of their own; this one is the runtime's (it never calls setsid).
_SESSION = os.getsid(0)


class StarterStopped(RuntimeError):
    """A start was asked of a process reactor or worker pool that has stopped (the runtime is
    stopping): nothing was started and nothing will be reported."""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What to run. ``env`` is the complete environment (see :func:`environment_for`)."""

    argv: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...]
    log_path: str  # stdout+stderr appended here; parent directories are created
    timeout_s: float | None = None
    memory_limit_mb: float | None = None  # summed RSS of the whole tree
    grace_s: float = 2.0  # SIGTERM, wait this long, then SIGKILL
    # An environment entry (name, value) that every process of this spec inherits: a kill also
    # takes processes carrying it, which finds grandchildren that called setsid and were
    # orphaned before any sample saw them.
    marker: tuple[str, str] | None = None
    # Descriptors the process inherits besides 0-2 (e.g. a pool worker's request and reply pipes).
    pass_fds: tuple[int, ...] = ()


OnExit = Callable[[ProcessResult], None]
# Told (pid, create_time) once the process runs, before anything can report its exit; pid -1
# when it never started.
OnStarted = Callable[[int, float], None]


def environment_for(
    env_pairs: Iterable[tuple[str, str]], extra: Mapping[str, str] | None = None
) -> tuple[tuple[str, str], ...]:
    """The full environment for a task: ``os.environ``, ``PYTHONUNBUFFERED=1``, the task's
    pairs, then ``extra``; later entries win, so a task may override the unbuffered default."""
    env = dict(os.environ)
    # Python children block-buffer stdout when it is not a tty; logs should arrive as written.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(env_pairs)
    env.update(extra or {})
    return tuple(env.items())


# -- /proc -------------------------------------------------------------------------------------


class _Stat(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    sid: int
    # Clock ticks from boot to the process's start. Internally (pid, start) is the identity, as in
    # psutil: unlike create_time it does not move when the wall clock is stepped.
    start: int
    state: str  # "Z" for a zombie: dead, waiting for its parent to reap it


def _create_time(start: int) -> float:
    """psutil's ``create_time()`` for a start tick (same arithmetic, so the floats compare equal)."""
    return start / _CLOCK_TICKS + psutil.boot_time()


def _read_stat(pid: int) -> _Stat | None:
    """``pid``'s line of ``/proc/<pid>/stat``, or None if it is gone (zombies are still there)."""
    # os.open/os.read rather than open(): this runs for every process on every scan.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:  # ESRCH: it was reaped between open and read
        return None
    finally:
        os.close(fd)
    # The command name is parenthesised and may itself contain ") ": split after the last one.
    fields = data[data.rfind(b")") + 2 :].split()
    return _Stat(pid, int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]), fields[0].decode())


class _ProcTable:
    """One pass over /proc: every process with its parent, process group and session."""

    def __init__(self) -> None:
        self.stats: dict[int, _Stat] = {}
        self.children: defaultdict[int, list[_Stat]] = defaultdict(list)
        self.by_group_or_session: defaultdict[int, list[_Stat]] = defaultdict(list)
        for name in os.listdir("/proc"):
            if name.isdigit() and (stat := _read_stat(int(name))) is not None:
                self.stats[stat.pid] = stat
                self.children[stat.ppid].append(stat)
                self.by_group_or_session[stat.pgid].append(stat)
                if stat.sid != stat.pgid:
                    self.by_group_or_session[stat.sid].append(stat)

    def marked(self, marker: tuple[str, str] | None, among: Iterable[_Stat] | None = None) -> list[_Stat]:
        """Processes (of ``among``, default all) whose environment holds ``NAME=VALUE`` (ours;
        others' are unreadable, and so are zombies')."""
        if marker is None:
            return []
        entry = f"{marker[0]}={marker[1]}".encode()
        found = []
        for stat in self.stats.values() if among is None else among:
            try:
                with open(f"/proc/{stat.pid}/environ", "rb") as handle:
                    if entry in handle.read().split(b"\0"):
                        found.append(stat)
            except OSError:
                continue
        return found

    def tree(self, pid: int, start: int, known: Iterable[tuple[int, int]] = ()) -> list[_Stat]:
        """The process ``(pid, start)`` (root first, if alive), every process in the group or
        session named by ``pid``, the ``known`` identities still alive, and all their descendants.

        The group and session members count even when the root is gone: while any process is in
        group or session N, the kernel does not hand out N as a new pid, so they can only be the
        root's. If pid N now names a different process, the root's group is empty and only
        ``known`` (e.g. escapees that called setsid, seen while their parent lived) remain."""
        seeds = [stat for p, t in known if (stat := self.stats.get(p)) is not None and stat.start == t]
        root = self.stats.get(pid)
        if root is None or root.start == start:
            seeds[:0] = ([root] if root else []) + self.by_group_or_session.get(pid, [])
        return self.descendants(seeds)

    def descendants(self, seeds: Iterable[_Stat]) -> list[_Stat]:
        """``seeds`` and everything below them, each once, seeds first (never this process)."""
        found: dict[int, _Stat] = {}
        queue = deque(seeds)
        while queue:
            stat = queue.popleft()
            if stat.pid not in found and stat.pid != os.getpid():
                found[stat.pid] = stat
                queue.extend(self.children.get(stat.pid, ()))
        return list(found.values())

    def adopted(self, roots: Container[int]) -> list[_Stat]:
        """Our children outside our session, except ``roots``, with all their descendants.

        Every process a tool starts is in the tool's session or a newer one, never ours; so
        with ``roots`` the tools' own processes, these are the orphans we adopted as subreaper
        (and what they started). Children our threads start with ``subprocess.run`` share our
        session and are left out."""
        return self.descendants(
            stat for stat in self.children.get(os.getpid(), ()) if stat.sid != _SESSION and stat.pid not in roots
        )


# -- killing -----------------------------------------------------------------------------------


class _OneScan:
    """A /proc scan made on first use and reused after (one reactor round's view)."""

    __slots__ = ("scanned",)

    def __init__(self) -> None:
        self.scanned: _ProcTable | None = None

    def __call__(self) -> _ProcTable:
        if self.scanned is None:
            self.scanned = _ProcTable()
        return self.scanned


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited (as a zombie or reaped)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _pin(targets: Iterable[_Stat]) -> dict[int, _Stat]:
    """pidfds for the targets that still have the same identity. A pidfd keeps naming its
    process even if the pid is reused afterwards, so signals sent through it cannot go astray."""
    pinned: dict[int, _Stat] = {}
    try:
        for target in targets:
            try:
                pidfd = os.pidfd_open(target.pid)
            except ProcessLookupError:
                continue
            now = _read_stat(target.pid)
            if now is None or now.start != target.start:
                os.close(pidfd)  # the pid was reused between the snapshot and pidfd_open
            else:
                pinned[pidfd] = target
    except BaseException:
        for pidfd in pinned:
            os.close(pidfd)
        raise
    return pinned


def _signal(pinned: Mapping[int, _Stat], group: int, signum: int) -> list[int]:
    """Send ``signum`` to process group ``group`` and to each pinned process still alive (in
    order, root first); return the pids signalled."""
    alive = {pidfd: stat for pidfd, stat in pinned.items() if not _exited(pidfd)}
    # killpg also reaches members forked after the snapshot. It is only safe while a live member
    # of ours holds the group id (see _ProcTable.tree). Group 0 means none (killpg(0) would be ours).
    if group > 0 and any(stat.pgid == group for stat in alive.values()):
        try:
            os.killpg(group, signum)
        except (ProcessLookupError, PermissionError):
            pass
    sent = []
    for pidfd, stat in alive.items():
        try:
            signal.pidfd_send_signal(pidfd, signum)
            sent.append(stat.pid)
        except (ProcessLookupError, PermissionError):
            pass
    return sent


def _wait_exited(pinned: Mapping[int, _Stat], timeout_s: float) -> dict[int, _Stat]:
    """Wait until every pinned process has exited (zombies count: they are dead, merely not yet
    reaped by their parent) or ``timeout_s`` passes; return those still alive."""
    alive = dict(pinned)
    poller = select.poll()
    for pidfd in alive:
        poller.register(pidfd, select.POLLIN)
    deadline = time.monotonic() + timeout_s
    while alive and (remaining := deadline - time.monotonic()) > 0:
        for pidfd, _ in poller.poll(remaining * 1000):
            poller.unregister(pidfd)
            del alive[pidfd]
    return alive


def _terminate(targets: list[_Stat], group: int, grace_s: float) -> list[int]:
    """SIGTERM the targets and ``group``, wait ``grace_s``, SIGKILL survivors, wait again."""
    pinned = _pin(targets)
    try:
        killed = _signal(pinned, group, signal.SIGTERM)
        survivors = _wait_exited(pinned, grace_s)
        if survivors:
            killed += [pid for pid in _signal(survivors, group, signal.SIGKILL) if pid not in killed]
            if survivors := _wait_exited(survivors, _KILL_WAIT_S):
                log.warning("processes survived SIGKILL", pids=[stat.pid for stat in survivors.values()])
        return killed
    finally:
        for pidfd in pinned:
            os.close(pidfd)


def _belonging(
    table: _ProcTable,
    pid: int,
    start: int,
    known: Iterable[tuple[int, int]],
    marker: tuple[str, str] | None,
    adopted_except: Container[int] | None,
) -> list[_Stat]:
    """The live (non-zombie) processes of the process ``(pid, start)``: its tree (see
    :meth:`_ProcTable.tree`) and every process carrying ``marker``, with their descendants.

    ``adopted_except`` (the roots of the other running tools) says we are subreaper: an escapee
    of this tree is then either in it or among our adopted orphans, so only those are searched
    for the marker. ``None`` searches every process (reading each one's environment)."""
    among = None if adopted_except is None else table.adopted(adopted_except)
    found = table.tree(pid, start, known) + table.descendants(table.marked(marker, among))
    unique = {stat.pid: stat for stat in found if stat.state != "Z"}
    return list(unique.values())


def kill_descendants(grace_s: float = 0.0) -> list[int]:
    """Kill every process below this one that is outside its session (every tool's process
    tree, and the orphans we adopted), each tree through its process group; return the pids
    signalled. Takes no lock, so a signal handler may call it."""
    table = _ProcTable()
    killed: list[int] = []
    for child in table.children.get(os.getpid(), ()):
        if child.sid != _SESSION:
            killed += _terminate(table.descendants([child]), child.pid, grace_s)
    return killed


def _prctl_subreaper(on: bool) -> bool:
    """Set or clear this process's child-subreaper attribute; False if the kernel refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


_subreaper_lock = threading.Lock()
_subreaper_holders = 0


def _hold_subreaper() -> bool:
    """Make this process a child subreaper (the attribute is per process, shared by every
    reactor in it: the last one to let go clears it). False if that is not possible."""
    global _subreaper_holders
    with _subreaper_lock:
        if _subreaper_holders == 0 and not _prctl_subreaper(True):
            return False
        _subreaper_holders += 1
        return True


def _release_subreaper() -> None:
    global _subreaper_holders
    with _subreaper_lock:
        _subreaper_holders -= 1
        if _subreaper_holders == 0:
            _prctl_subreaper(False)


def _adopted_pids() -> set[int] | None:
    """Children of our main thread (where the kernel re-parents orphans of a subreaper), from
    one small /proc file; None if the kernel does not provide it."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children", "rb") as handle:
            return {int(pid) for pid in handle.read().split()}
    except OSError:
        return None


def kill_tree(pid: int, create_time: float, grace_s: float = 2.0) -> list[int]:
    """Kill process ``(pid, create_time)`` and everything that belongs to it; return the pids
    that were alive and got a signal.

    The tree is snapshotted first: descendants, plus every process in the process group or session
    named ``pid`` (a grandchild may have left the group with setsid, or been orphaned). Then SIGTERM
    to the group and each process, up to ``grace_s`` to exit, SIGKILL to survivors. Works when the
    root itself has already exited. Does nothing if ``pid`` now names a different process. Never
    reaps: a zombie counts as dead and is left to its parent. Blocks for up to ``grace_s`` + 5 s.
    """
    return _terminate(_ProcTable().tree(pid, _start_ticks(create_time)), pid, grace_s)


def _start_ticks(create_time: float) -> int:
    """The start tick of a process whose psutil ``create_time()`` is ``create_time``."""
    return round((create_time - psutil.boot_time()) * _CLOCK_TICKS)


def _tree_rss(
    tree: Iterable[_Stat], members: Mapping[tuple[int, int], psutil.Process]
) -> tuple[int, dict[tuple[int, int], psutil.Process]]:
    """The summed RSS of ``tree`` and its members by identity, reusing the psutil objects of
    ``members`` (the last sample's) for the processes still there."""
    found: dict[tuple[int, int], psutil.Process] = {}
    rss = 0
    for stat in tree:
        key = (stat.pid, stat.start)
        try:
            if (proc := members.get(key)) is None:
                proc = psutil.Process(stat.pid)
                # Same start after the object was made: it is the process that was scanned.
                if (now := _read_stat(stat.pid)) is None or now.start != stat.start:
                    continue
            with proc.oneshot():
                rss += proc.memory_info().rss
        except psutil.Error:
            continue
        found[key] = proc
    return rss, found


def tree_rss(
    pid: int, create_time: float, members: Mapping[tuple[int, int], psutil.Process] | None = None
) -> tuple[int, dict[tuple[int, int], psutil.Process]]:
    """The summed RSS of process ``(pid, create_time)`` and all its descendants (0 if it is
    gone), and the sampled members, to pass back as ``members`` next time (see
    :meth:`ProcessReactor._sample`)."""
    table = _ProcTable()
    root = table.stats.get(pid)
    if root is None or root.start != _start_ticks(create_time):
        return 0, {}
    return _tree_rss(table.descendants([root]), members or {})


def kill_below(pid: int, create_time: float, grace_s: float = 2.0) -> list[int]:
    """Kill every descendant of the live process ``(pid, create_time)``, never the process
    itself; return the pids signalled.

    For a process that stays (a pool worker after its task): its children share its process
    group, so no group signal is sent; instead the tree is looked at again after each kill, up
    to a few rounds, for what forked meanwhile. Zombies are left to their parent to reap.
    """
    start = _start_ticks(create_time)
    killed: list[int] = []
    for _ in range(_KILL_ROUNDS):
        table = _ProcTable()
        root = table.stats.get(pid)
        if root is None or root.start != start:
            break
        targets = [stat for stat in table.descendants(table.children.get(pid, ())) if stat.state != "Z"]
        if not targets:
            break
        # No group (0): the worker is in it. Each process is signalled through its pidfd.
        killed += [p for p in _terminate(targets, 0, grace_s) if p not in killed]
    return killed


def _group_empty(pgid: int) -> bool:
    """True when no process is in group ``pgid`` (signal 0 probes without signalling)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _other_members(task: _Task) -> bool:
    return any(pid != task.pid for pid, _ in task.members)


# -- the reactor -------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Task:
    spec: ProcessSpec
    on_exit: OnExit
    pid: int
    pidfd: int
    start: int  # identity, with pid (see _Stat)
    create_time: float
    started: float
    outcome: str = "exited"
    killing: bool = False  # a kill thread is working on the tree
    kill_rounds: int = 0
    reaped: bool = False
    ended: float = 0.0
    status: int | None = None  # wait status; None if someone else reaped it
    rusage: resource.struct_rusage | None = None
    max_rss: int = 0
    # Every tree member seen by a sample, kept so later samples reuse the psutil objects and so a
    # kill still finds members that have since been orphaned outside the group and session.
    members: dict[tuple[int, int], psutil.Process] = field(default_factory=dict)
    log_cap: CappedLog | None = None

    @property
    def deadline(self) -> float | None:
        return None if self.spec.timeout_s is None else self.started + self.spec.timeout_s


def _start(spec: ProcessSpec) -> tuple[int, int]:
    """Start ``spec`` in a new session; return its pid and pidfd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    try:
        log_fd = os.open(spec.log_path, flags, 0o644)
    except FileNotFoundError:  # first log of its directory: create it only then (spawn is hot)
        os.makedirs(os.path.dirname(spec.log_path) or ".", exist_ok=True)
        log_fd = os.open(spec.log_path, flags, 0o644)
    try:
        pid = spawn(spec.argv, spec.cwd, spec.env, log_fd, spec.pass_fds)
    finally:
        os.close(log_fd)
    try:
        return pid, os.pidfd_open(pid)
    except OSError:
        # Out of file descriptors: a process nobody watches must not keep running.
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def _error_text(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.strerror}: {exc.filename!r}"
    return str(exc)


def report_start(on_started: OnStarted, pid: int, create_time: float) -> None:
    """Call ``on_started(pid, create_time)``; a callback that raises is logged, never lets its
    exception reach the thread that starts processes."""
    try:
        on_started(pid, create_time)
    except Exception:
        log.exception("process on_started callback failed", pid=pid)


def report_exit(on_exit: OnExit, result: ProcessResult) -> None:
    """Call ``on_exit(result)``; a callback that raises is logged, never lets its exception
    reach (and stop) the thread that reports."""
    try:
        on_exit(result)
    except Exception:
        try:
            log.exception("process on_exit callback failed", pid=result.pid, outcome=result.outcome)
        except Exception:  # a broken log stream must not take the reactor thread down with it
            pass


class ProcessReactor:
    """Starts processes and watches them all from one daemon thread.

    ``spawn``, ``cancel``, ``running`` and ``stop`` may be called from any thread. Callbacks run on
    the reactor thread and should be quick (tell an actor a message). Kills run on short-lived
    helper threads so that one tree's grace period never delays another process's report.

    Nothing else in this Python process may reap these children: do not set SIGCHLD to SIG_IGN
    or call ``os.waitpid(-1, ...)``.

    ``adopt_orphans=True`` (the runtime's choice) makes this process a child subreaper while the
    reactor runs, and the reactor reaps the dead orphans it adopts. It tells them from children
    someone else waits for by their session: it reaps only zombie children outside this
    process's session that it did not spawn, so code sharing the process must not start
    children of its own with ``start_new_session=True`` (``subprocess.run`` as is, is fine).
    """

    def __init__(self, sample_interval_s: float = 0.5, adopt_orphans: bool = False, spawners: int = 2,
                 log_cap_bytes: int | None = None) -> None:
        self._sample_interval_s = sample_interval_s
        # Output logs are cut down past this many bytes (see adapters.logcap); None: never.
        self._log_cap_bytes = log_cap_bytes
        self._caps: dict[str, tuple[CappedLog, int]] = {}  # by log path: the cap, how many tasks write it
        self._adopt_orphans = adopt_orphans
        self._adopting = False  # set by start(): we are subreaper
        # _lock guards _accepting, _closed, _tasks and the order of commands posted by spawn/stop.
        self._lock = threading.Lock()
        self._accepting = False
        self._closed = True  # until start() opens the wakeup pipe
        self._tasks: set[_Task] = set()  # spawned, on_exit not yet called
        self._spawning = 0  # spawn() calls between fork and registration in _tasks
        self._wakeup = Wakeup()
        self._thread = threading.Thread(target=self._run, name="orchestrate-processes", daemon=True)
        # start() requests wait here for a spawner thread; None tells one to end.
        self._requests: queue.SimpleQueue[tuple[ProcessSpec, OnStarted, OnExit] | None] = queue.SimpleQueue()
        self._spawners = [threading.Thread(target=self._spawner, name=f"orchestrate-spawner-{n}", daemon=True)
                          for n in range(spawners)]
        # Markers of attempts cancelled by cancel_marked: their processes are killed the moment
        # they are watched (a cancel can arrive while the spawn is still under way).
        self._cancelled_markers: set[tuple[str, str]] = set()
        # Reactor-thread state.
        self._live: dict[int, _Task] = {}  # not yet reaped, by pid (unique until reaped)
        self._unswept: list[_Task] = []  # exited on their own; leftovers not yet looked for
        self._next_sweep = 0.0
        self._stopping = False
        self._detached = False
        self._reporting = True
        self._next_sample = 0.0
        self._selector: selectors.BaseSelector  # opened by start(), with the wakeup pipe

    def start(self) -> None:
        """Start the reactor thread; ``spawn`` is accepted from now until ``stop``. With
        ``adopt_orphans``, this process is a child subreaper from now until the reactor ends
        (unless the kernel refuses: then escapees are searched among all processes)."""
        self._adopting = self._adopt_orphans and _hold_subreaper()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wakeup.open(), selectors.EVENT_READ, None)
        with self._lock:
            self._accepting, self._closed = True, False
        self._thread.start()
        for spawner in self._spawners:
            spawner.start()

    def spawn(self, spec: ProcessSpec, on_exit: OnExit) -> tuple[int, float]:
        """Start ``spec`` now, in the caller's thread, and return its ``(pid, create_time)``.

        The process gets its own session and process group, stdin from /dev/null, and stdout and
        stderr appended to ``spec.log_path``. ``on_exit`` is called exactly once, on the reactor
        thread, after the process is reaped and every process of its tree is dead (background jobs
        it left behind are killed too, even after a successful exit). If it cannot be started
        (bad cwd, missing executable, unwritable log) ``on_exit`` gets outcome ``spawn_error`` and
        this returns ``(-1, 0.0)``. Raises StarterStopped if the reactor is not running.
        """
        with self._lock:
            if not self._accepting:
                raise StarterStopped("ProcessReactor is not running")
            self._spawning += 1
        try:
            return self._spawn(spec, None, on_exit)
        finally:
            with self._lock:
                self._spawning -= 1

    def start_process(self, spec: ProcessSpec, on_started: OnStarted, on_exit: OnExit) -> None:
        """Like :meth:`spawn`, but on a spawner thread, so the caller does not wait the ~0.5 ms a
        start takes (the kernel's clone and exec) and several starts overlap. ``on_started`` is
        called on that thread with ``(pid, create_time)`` — ``(-1, 0.0)`` when it could not
        start — before ``on_exit`` can be. A request still queued when the reactor stops never
        starts: it is reported ``(-1, 0.0)`` and, unless reporting is off, outcome ``cancelled``.
        Raises StarterStopped if the reactor is not running."""
        with self._lock:
            if not self._accepting:
                raise StarterStopped("ProcessReactor is not running")
            self._requests.put((spec, on_started, on_exit))

    def _spawner(self) -> None:
        while (request := self._requests.get()) is not None:
            spec, on_started, on_exit = request
            with self._lock:
                accepting = self._accepting
                if accepting:
                    self._spawning += 1
            if not accepting:
                self._never_started(on_started, on_exit)
                continue
            try:
                self._spawn(spec, on_started, on_exit)
            except RuntimeError:  # stop() began while it was starting; the process is gone
                self._never_started(None, on_exit)
            finally:
                with self._lock:
                    self._spawning -= 1

    def _never_started(self, on_started: OnStarted | None, on_exit: OnExit) -> None:
        if on_started is not None:
            report_start(on_started, -1, 0.0)
        if self._reporting:
            report_exit(on_exit, ProcessResult(-1, 0.0, None, None, "cancelled", 0.0, 0, 0.0))

    def _spawn(self, spec: ProcessSpec, on_started: OnStarted | None, on_exit: OnExit) -> tuple[int, float]:
        # The fork happens outside the lock: the reactor thread takes the same lock to report
        # exits, and must not wait for a spawn (~0.5 ms) each time.
        started = time.monotonic()
        try:
            pid, pidfd = _start(spec)
        except Exception as exc:  # whatever stops a start, the caller hears of it once
            failed = ProcessResult(-1, 0.0, None, None, "spawn_error", 0.0, 0, 0.0, _error_text(exc))
            if on_started is not None:
                report_start(on_started, -1, 0.0)
            self._post(lambda: report_exit(on_exit, failed))
            return -1, 0.0
        # Unreaped, so the stat file is there even if it already exited.
        stat = _read_stat(pid)
        assert stat is not None
        task = _Task(spec, on_exit, pid, pidfd, stat.start, _create_time(stat.start), started)
        if on_started is not None:
            report_start(on_started, task.pid, task.create_time)
        with self._lock:
            if not self._accepting:
                # stop() began while this one was starting: it must not outlive the reactor.
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(pidfd)
                raise StarterStopped("ProcessReactor is not running")
            self._tasks.add(task)
            self._post_locked(functools.partial(self._watch, task))
        return task.pid, task.create_time

    def cancel(self, pid: int, create_time: float | None = None) -> None:
        """Kill the tree of running process ``pid`` (only if its create_time matches, when given);
        it is reported with outcome ``cancelled``. Unknown or finished pids are ignored."""

        def command() -> None:
            task = self._live.get(pid)
            if task is not None and create_time in (None, task.create_time):
                self._kill(task, "cancelled")

        self._post(command)

    def cancel_marked(self, marker: tuple[str, str]) -> None:
        """Kill the running process whose spec carries ``marker`` (reported ``cancelled``), and
        any started with it from now on: a cancel may overtake a start still under way."""

        def command() -> None:
            self._cancelled_markers.add(marker)
            for task in list(self._live.values()):
                if task.spec.marker == marker:
                    self._kill(task, "cancelled")

        self._post(command)

    def running(self) -> list[tuple[int, float]]:
        """``(pid, create_time)`` of every spawned process whose ``on_exit`` has not been called."""
        with self._lock:
            return [(task.pid, task.create_time) for task in self._tasks]

    def stop(self, kill: bool = True, report: bool = True) -> None:
        """Stop accepting spawns and join the reactor thread. Must not be called from ``on_exit``.

        ``kill=True``: kill every tree still running; each is reported (outcome ``cancelled``)
        before this returns. ``kill=False``: leave them running, unwatched and unreported (still
        listed by ``running``). ``report=False``: from now on no ``on_exit`` is called at all
        (for a runtime that is going away and records its interrupted work itself).
        """
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            self._reporting = report
            for _ in self._spawners:
                self._requests.put(None)
        for spawner in self._spawners:
            spawner.join()
        with self._lock:
            self._post_locked(functools.partial(self._begin_stop, kill, report))
        self._thread.join()

    # -- posting to the reactor thread (any thread) ----------------------------------------------

    def _post(self, command: Callable[[], None]) -> None:
        with self._lock:
            self._post_locked(command)

    def _post_locked(self, command: Callable[[], None]) -> None:
        if self._closed:  # the reactor has finished; the wakeup fd may already be reused
            return
        self._wakeup.post(command)

    # -- the reactor thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("process reactor crashed")
            raise
        finally:
            with self._lock:
                self._accepting = False
                self._closed = True
            for task in self._live.values():
                os.close(task.pidfd)
            if self._adopting:
                _release_subreaper()
            self._selector.close()
            self._wakeup.close()

    def _loop(self) -> None:
        while True:
            exited = []
            for key, _ in self._selector.select(self._poll_timeout()):
                if key.data is None:
                    self._wakeup.drain()
                else:
                    exited.append(key.data)
            for command in self._wakeup.take():
                command()
            if self._detached:
                return
            for task in exited:
                self._reap(task)
            table = _OneScan()  # at most one /proc scan per round
            now = time.monotonic()
            if self._unswept and now >= self._next_sweep:
                self._next_sweep = now + _SWEEP_INTERVAL_S
                self._sweep(table())
            for task in list(self._live.values()):
                if not task.killing and task.deadline is not None and now >= task.deadline:
                    self._kill(task, "timeout")
                if task.log_cap is not None and now >= task.log_cap.next_check:
                    task.log_cap.check(now)
            if self._live and now >= self._next_sample:
                self._next_sample = now + self._sample_interval_s
                self._sample(table())
            if table.scanned is not None:
                self._reap_adopted(table.scanned)
            if self._stopping and not self._tasks:
                return

    def _poll_timeout(self) -> float | None:
        due = self._next_sweep if self._unswept else math.inf
        if self._live:
            due = min(due, self._next_sample)
        for task in self._live.values():
            if not task.killing and (deadline := task.deadline) is not None:
                due = min(due, deadline)
            if task.log_cap is not None:
                due = min(due, task.log_cap.next_check)
        return None if due == math.inf else max(0.0, due - time.monotonic())

    def _watch(self, task: _Task) -> None:
        self._live[task.pid] = task
        if self._log_cap_bytes is not None and task.spec.log_path:
            # Tasks writing one log (python workers share theirs) share its cap.
            cap, writers = self._caps.get(task.spec.log_path) or (
                CappedLog(task.spec.log_path, self._log_cap_bytes, time.monotonic()), 0)
            self._caps[task.spec.log_path] = (cap, writers + 1)
            task.log_cap = cap
        self._selector.register(task.pidfd, selectors.EVENT_READ, task)
        if task.spec.marker is not None and task.spec.marker in self._cancelled_markers:
            self._kill(task, "cancelled")

    def _begin_stop(self, kill: bool, report: bool) -> None:
        self._stopping = True
        self._reporting = report
        if not kill:
            self._detached = True
            return
        for task in list(self._live.values()):
            self._kill(task, "cancelled")

    def _reap(self, task: _Task) -> None:
        try:
            pid, status, rusage = os.wait4(task.pid, os.WNOHANG)
        except ChildProcessError:
            log.warning("process was reaped by someone else", pid=task.pid)
            pid, status, rusage = task.pid, None, None
        if pid == 0:
            return  # readable before the whole thread group is waitable: wait for the next event
        self._selector.unregister(task.pidfd)
        os.close(task.pidfd)
        del self._live[task.pid]
        task.reaped, task.ended, task.status, task.rusage = True, time.monotonic(), status, rusage
        if task.killing:
            return
        if _group_empty(task.pid) and not _other_members(task) and not self._may_have_escaped(task):
            # The common case, decided with two cheap reads: nothing of the task's process group
            # is left, no sample ever saw a member outside it, and no orphan was adopted, so
            # there is nothing to sweep.
            self._finish(task)
        else:
            self._unswept.append(task)

    def _may_have_escaped(self, task: _Task) -> bool:
        """Whether a process of ``task`` may live outside its group (having called setsid).
        As subreaper, such a process is now our adopted child, which one read of our main
        thread's children shows; otherwise only a scan of every process can tell."""
        if task.spec.marker is None:
            return False
        if not self._adopting:
            return True
        children = _adopted_pids()
        return children is None or any(pid not in self._live for pid in children)

    def _leftovers(self, task: _Task, table: _ProcTable) -> list[_Stat]:
        """What of ``task`` is still alive: its tree and the processes carrying its marker."""
        adopted_except = frozenset(self._live) if self._adopting else None
        return _belonging(table, task.pid, task.start, task.members, task.spec.marker, adopted_except)

    def _sweep(self, table: _ProcTable) -> None:
        """Kill what processes that exited on their own left behind (background jobs must not
        outlive their task, even after a successful exit), then report them."""
        for task in self._unswept:
            leftovers = self._leftovers(task, table)
            if leftovers:
                self._kill(task, task.outcome, lambda leftovers=leftovers: leftovers)
            else:
                self._finish(task)
        self._unswept.clear()

    def _reap_adopted(self, table: _ProcTable) -> None:
        """Reap the dead orphans we adopted as subreaper (no one else will), never a child
        someone waits for: not a tool we spawned (its exit status is reported by :meth:`_reap`),
        not a child in our own session (``subprocess.run`` waits for those), and not a session
        leader while a spawn is under way (it may be a tool not registered yet)."""
        if not self._adopting:
            return
        with self._lock:
            spawned = {task.pid for task in self._tasks}
            spawning = self._spawning > 0
        for stat in table.children.get(os.getpid(), ()):
            if stat.state != "Z" or stat.sid == _SESSION or stat.pid in spawned or stat.pid in self._live:
                continue
            if spawning and stat.sid == stat.pid:
                continue
            try:
                os.waitpid(stat.pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def _kill(self, task: _Task, outcome: str, targets: Callable[[], list[_Stat]] | None = None) -> None:
        """Kill ``task``'s tree on a helper thread (snapshotted there unless ``targets`` is given);
        the task is finished once that is done, nothing of it is left, and it is reaped."""
        if task.killing:
            return
        task.outcome, task.killing = outcome, True
        task.kill_rounds += 1
        known = list(task.members)
        adopted_except = frozenset(self._live) if self._adopting else None
        snapshot = targets or (
            lambda: _belonging(_ProcTable(), task.pid, task.start, known, task.spec.marker, adopted_except)
        )

        def work() -> None:
            try:
                _terminate(snapshot(), task.pid, task.spec.grace_s)
            except Exception:
                log.exception("killing process tree failed", pid=task.pid)
            self._post(functools.partial(self._killed, task))

        threading.Thread(target=work, name=f"orchestrate-kill-{task.pid}", daemon=True).start()

    def _killed(self, task: _Task) -> None:
        task.killing = False
        table = _ProcTable()
        # A process that forked, or left the group, after the snapshot was not signalled.
        survivors = [s for s in self._leftovers(task, table) if s.pid != task.pid]
        if survivors and task.kill_rounds < _KILL_ROUNDS:
            self._kill(task, task.outcome, lambda: survivors)
            return
        self._reap_adopted(table)
        if task.reaped:
            self._finish(task)

    def _finish(self, task: _Task) -> None:
        with self._lock:
            self._tasks.discard(task)
        if task.log_cap is not None:
            self._release_cap(task.log_cap)
        if not self._reporting:
            return
        status, rusage = task.status, task.rusage
        code = None if status is None else os.waitstatus_to_exitcode(status)
        max_rss = task.max_rss if rusage is None else max(task.max_rss, rusage.ru_maxrss * 1024)  # KiB on Linux
        result = ProcessResult(
            pid=task.pid,
            create_time=task.create_time,
            exit_code=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            outcome=task.outcome,
            duration_s=task.ended - task.started,
            max_rss_bytes=max_rss,
            cpu_s=0.0 if rusage is None else rusage.ru_utime + rusage.ru_stime,
        )
        report_exit(task.on_exit, result)

    def _release_cap(self, cap: CappedLog) -> None:
        """A task writing ``cap``'s log is done: trim the log to the cap once nobody writes it."""
        _, writers = self._caps.get(cap.path, (cap, 1))
        if writers > 1:
            self._caps[cap.path] = (cap, writers - 1)
            return
        self._caps.pop(cap.path, None)
        cap.finish()

    def _sample(self, table: _ProcTable) -> None:
        """Measure each running tree's RSS; kill trees over their memory limit."""
        for task in list(self._live.values()):
            if task.killing:
                continue
            rss, task.members = _tree_rss(table.tree(task.pid, task.start, task.members), task.members)
            task.max_rss = max(task.max_rss, rss)
            limit = task.spec.memory_limit_mb
            if limit is not None and rss > limit * 1024 * 1024:
                self._kill(task, "resource_limit")
