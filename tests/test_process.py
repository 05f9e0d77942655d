"""ProcessReactor and kill_tree: what executors rely on when they run tools.

Nothing here sleeps to wait: tests wait on events with deadlines, and learn child pids through a
FIFO the child writes to (opening it blocks the child until the test is reading).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from adapters.process import ProcessReactor, ProcessSpec, environment_for, kill_tree
from domain.outcomes import ProcessResult

DEADLINE_S = 15.0


class Collector:
    """An on_exit callback that records every call and can be waited on."""

    def __init__(self, expected: int = 1) -> None:
        self.results: list[ProcessResult] = []
        self.threads: set[str] = set()
        self._expected = expected
        self._lock = threading.Lock()
        self._done = threading.Event()

    def __call__(self, result: ProcessResult) -> None:
        with self._lock:
            self.results.append(result)
            self.threads.add(threading.current_thread().name)
            if len(self.results) >= self._expected:
                self._done.set()

    def wait(self, timeout: float = DEADLINE_S) -> list[ProcessResult]:
        assert self._done.wait(timeout), f"only {len(self.results)} of {self._expected} reported"
        return self.results

    def one(self) -> ProcessResult:
        return self.wait()[0]


class Fifo:
    """Named pipes shared with a child: it writes lines of pids to ``path`` (read here with a
    deadline), and ``read x < gate`` in it waits for :meth:`release`."""

    def __init__(self, directory: Path) -> None:
        self.path, self.gate = directory / "pids.fifo", directory / "gate.fifo"
        os.mkfifo(self.path)
        os.mkfifo(self.gate)
        # Our read end is open first, so the child's `echo ... > fifo` never blocks. We also hold a
        # write end: with no writer left, poll() would report POLLHUP with nothing to read.
        self._pids = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._keep = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        # Read-write, so the child's `< gate` opens at once and only its read waits.
        self._gate = os.open(self.gate, os.O_RDWR)
        self._buffer = b""

    def read_pids(self, timeout: float = DEADLINE_S) -> list[psutil.Process]:
        """The next line of pids, as psutil handles (identity fixed now, while they run)."""
        poller = select.poll()
        poller.register(self._pids, select.POLLIN)
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the child never wrote its pids"
            if poller.poll(remaining * 1000):
                self._buffer += os.read(self._pids, 4096)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return [psutil.Process(int(pid)) for pid in line.split()]

    def release(self) -> None:
        os.write(self._gate, b"go\n")

    def close(self) -> None:
        for fd in (self._pids, self._keep, self._gate):
            os.close(fd)


def alive(proc: psutil.Process) -> bool:
    """Running as the same process. Zombies are dead: in a container, pid 1 may never reap them."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def session_members(sid: int) -> list[int]:
    """Live processes in session ``sid`` (it outlives its leader while it has members)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and alive(proc):
                members.append(proc.pid)
        except (OSError, psutil.Error):
            pass
    return members


def shell(command: str, cwd: Path, **kwargs: object) -> ProcessSpec:
    return ProcessSpec(
        argv=("/bin/sh", "-c", command),
        cwd=str(cwd),
        env=environment_for(()),
        log_path=str(cwd / "logs" / "task.log"),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def reactor() -> Iterator[ProcessReactor]:
    reactor = ProcessReactor(sample_interval_s=0.05)
    reactor.start()
    yield reactor
    reactor.stop()


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    fifo = Fifo(tmp_path)
    yield fifo
    fifo.close()


def test_exit_codes_output_cwd_and_env(reactor: ProcessReactor, tmp_path: Path) -> None:
    ok, failed = Collector(), Collector()
    reactor.spawn(shell("echo hello", tmp_path), ok)
    spec = ProcessSpec(
        argv=("/bin/sh", "-c", 'pwd; echo "FOO=$FOO"; echo oops >&2; exit 3'),
        cwd=str(tmp_path),
        env=environment_for([("FOO", "bar")]),
        log_path=str(tmp_path / "logs" / "fail.log"),
    )
    pid, create_time = reactor.spawn(spec, failed)

    assert (ok.one().outcome, ok.one().exit_code, ok.one().signal) == ("exited", 0, None)
    result = failed.one()
    assert (result.outcome, result.exit_code, result.signal) == ("exited", 3, None)
    assert (result.pid, result.create_time) == (pid, create_time)
    assert result.duration_s >= 0 and result.cpu_s >= 0 and result.max_rss_bytes > 0
    assert (tmp_path / "logs" / "task.log").read_text() == "hello\n"
    assert (tmp_path / "logs" / "fail.log").read_text() == f"{tmp_path}\nFOO=bar\noops\n"
    assert ok.threads == {"orchestrate-processes"}


def test_create_time_is_psutils(reactor: ProcessReactor, tmp_path: Path, fifo: Fifo) -> None:
    done = Collector()
    pid, create_time = reactor.spawn(shell(f"echo $$ > {fifo.path}; exec sleep 100", tmp_path), done)
    assert psutil.Process(pid).create_time() == create_time
    assert reactor.running() == [(pid, create_time)]
    fifo.read_pids()
    reactor.cancel(pid, create_time + 1)  # another incarnation of the pid: ignored
    reactor.cancel(pid, create_time)
    assert done.one().outcome == "cancelled"
    assert reactor.running() == []


def test_log_is_appended_and_its_directory_created(reactor: ProcessReactor, tmp_path: Path) -> None:
    spec = shell("echo line", tmp_path)
    for _ in range(2):
        done = Collector()
        reactor.spawn(spec, done)
        done.one()
    assert Path(spec.log_path).read_text() == "line\nline\n"


def test_signal_reported(reactor: ProcessReactor, tmp_path: Path) -> None:
    done = Collector()
    reactor.spawn(shell("kill -USR1 $$", tmp_path), done)
    result = done.one()
    assert (result.outcome, result.exit_code, result.signal) == ("exited", None, signal.SIGUSR1)


def test_timeout_kills_the_whole_tree(reactor: ProcessReactor, tmp_path: Path, fifo: Fifo) -> None:
    done = Collector()
    pid, _ = reactor.spawn(shell(f'sleep 100 & echo "$$ $!" > {fifo.path}; sleep 100', tmp_path, timeout_s=1), done)
    tree = fifo.read_pids()
    result = done.one()
    assert result.outcome == "timeout"
    assert 1.0 <= result.duration_s < 3.0
    assert result.signal == signal.SIGTERM
    assert not [p.pid for p in tree if alive(p)]
    assert session_members(pid) == []


@pytest.mark.parametrize("end", ["timeout", "cancel"])
def test_setsid_grandchild_is_killed(reactor: ProcessReactor, tmp_path: Path, fifo: Fifo, end: str) -> None:
    done = Collector()
    # The escapee reports its pid itself, so it has already left the session when we read it.
    command = f"setsid sh -c 'echo $$ > {fifo.path}; exec sleep 100' & sleep 100"
    pid, _ = reactor.spawn(shell(command, tmp_path, timeout_s=1 if end == "timeout" else None), done)
    [escapee] = fifo.read_pids()
    assert os.getsid(escapee.pid) == escapee.pid != os.getsid(pid)
    if end == "cancel":
        reactor.cancel(pid)
    assert done.one().outcome == ("timeout" if end == "timeout" else "cancelled")
    assert not alive(escapee)


def test_orphaned_setsid_grandchild_seen_by_a_sample_is_killed(
    reactor: ProcessReactor, tmp_path: Path, fifo: Fifo
) -> None:
    # The intermediate process lives for 1 s (20 samples), then exits: its setsid child is then in
    # neither the task's session nor its descendants, and only the reactor's memory finds it.
    done = Collector()
    command = f"(setsid sh -c 'echo $$ > {fifo.path}; exec sleep 100' & sleep 1); sleep 100"
    reactor.spawn(shell(command, tmp_path, timeout_s=2), done)
    [escapee] = fifo.read_pids()
    assert done.one().outcome == "timeout"
    assert not alive(escapee)


def test_background_job_of_a_successful_command_is_killed(
    reactor: ProcessReactor, tmp_path: Path, fifo: Fifo
) -> None:
    done = Collector()
    reactor.spawn(shell(f"sleep 100 & echo $! > {fifo.path}; read x < {fifo.gate}", tmp_path), done)
    [job] = fifo.read_pids()
    fifo.release()
    result = done.one()
    assert (result.outcome, result.exit_code) == ("exited", 0)
    assert not alive(job)


def test_memory_limit(reactor: ProcessReactor, tmp_path: Path) -> None:
    done = Collector()
    spec = ProcessSpec(
        argv=(sys.executable, "-c", "import time; b = b'x' * (200 << 20); time.sleep(100)"),
        cwd=str(tmp_path),
        env=environment_for(()),
        log_path=str(tmp_path / "mem.log"),
        timeout_s=30,
        memory_limit_mb=50,
    )
    reactor.spawn(spec, done)
    result = done.one()
    assert result.outcome == "resource_limit"
    assert result.max_rss_bytes > 50 << 20
    assert result.duration_s < 10


@pytest.mark.parametrize(
    ("argv", "cwd", "error"),
    [
        (("/bin/true",), "/nonexistent/dir", "No such file or directory: '/nonexistent/dir'"),
        (("no-such-tool-xyz",), ".", "No such file or directory: 'no-such-tool-xyz'"),
    ],
)
def test_spawn_error_reported_once(
    reactor: ProcessReactor, tmp_path: Path, argv: tuple[str, ...], cwd: str, error: str
) -> None:
    done = Collector()
    spec = ProcessSpec(argv=argv, cwd=cwd, env=environment_for(()), log_path=str(tmp_path / "x.log"))
    assert reactor.spawn(spec, done) == (-1, 0.0)
    result = done.one()
    reactor.stop()  # joins the reactor thread: no more callbacks can come
    assert len(done.results) == 1
    assert (result.outcome, result.pid, result.exit_code, result.signal) == ("spawn_error", -1, None, None)
    assert result.error == error


def test_many_concurrent_spawns_each_reported_once(reactor: ProcessReactor, tmp_path: Path) -> None:
    count = 200
    done = Collector(count)
    spec = ProcessSpec(("/bin/true",), str(tmp_path), environment_for(()), str(tmp_path / "t.log"))
    started = {reactor.spawn(spec, done) for _ in range(count)}
    results = done.wait()
    reactor.stop()
    assert len(results) == count
    assert {(r.pid, r.create_time) for r in results} == started
    assert {(r.outcome, r.exit_code) for r in results} == {("exited", 0)}


def test_spawn_from_many_threads(reactor: ProcessReactor, tmp_path: Path) -> None:
    done = Collector(40)
    spec = ProcessSpec(("/bin/true",), str(tmp_path), environment_for(()), str(tmp_path / "t.log"))
    threads = [threading.Thread(target=lambda: [reactor.spawn(spec, done) for _ in range(10)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({(r.pid, r.create_time) for r in done.wait()}) == 40


def test_cancel(reactor: ProcessReactor, tmp_path: Path) -> None:
    done = Collector()
    pid, _ = reactor.spawn(shell("exec sleep 100", tmp_path), done)
    reactor.cancel(pid)
    result = done.one()
    assert (result.outcome, result.signal) == ("cancelled", signal.SIGTERM)
    assert result.duration_s < 3


def test_sigterm_ignored_then_sigkill(reactor: ProcessReactor, tmp_path: Path, fifo: Fifo) -> None:
    done = Collector()
    command = f"trap '' TERM; echo $$ > {fifo.path}; while :; do sleep 1; done"
    pid, _ = reactor.spawn(shell(command, tmp_path, grace_s=0.2), done)
    fifo.read_pids()  # the trap is installed
    reactor.cancel(pid)
    result = done.one()
    assert (result.outcome, result.signal) == ("cancelled", signal.SIGKILL)


def test_callback_exception_does_not_stop_the_reactor(reactor: ProcessReactor, tmp_path: Path) -> None:
    def explode(result: ProcessResult) -> None:
        raise RuntimeError("boom")

    reactor.spawn(shell("true", tmp_path), explode)
    done = Collector()
    reactor.spawn(shell("true", tmp_path), done)
    assert done.one().outcome == "exited"


def test_stop_kills_remaining_trees(reactor: ProcessReactor, tmp_path: Path, fifo: Fifo) -> None:
    done = Collector(3)
    for _ in range(3):
        reactor.spawn(shell(f'sleep 100 & echo "$$ $!" > {fifo.path}; sleep 100', tmp_path), done)
    trees = [fifo.read_pids() for _ in range(3)]
    reactor.stop()
    assert [r.outcome for r in done.results] == ["cancelled"] * 3
    assert not [p.pid for tree in trees for p in tree if alive(p)]
    assert reactor.running() == []
    with pytest.raises(RuntimeError):
        reactor.spawn(shell("true", tmp_path), done)


def test_kill_tree_of_a_process_we_did_not_spawn_through_the_reactor(tmp_path: Path, fifo: Fifo) -> None:
    command = f"sleep 100 & setsid sh -c 'echo $$ > {fifo.path}; exec sleep 100' & exec sleep 100"
    with subprocess.Popen(["/bin/sh", "-c", command], start_new_session=True) as popen:
        try:
            fifo.read_pids()  # everything is forked by now
            root = psutil.Process(popen.pid)
            tree = [root, *root.children(recursive=True)]
            assert len(tree) == 3
            killed = kill_tree(root.pid, root.create_time(), grace_s=1)
            assert sorted(killed) == sorted(p.pid for p in tree)
            assert not [p.pid for p in tree if alive(p)]  # kill_tree returns once they are dead...
            assert popen.wait(DEADLINE_S) == -signal.SIGTERM  # ...and leaves reaping to the parent
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is empty if kill_tree worked
                os.killpg(popen.pid, signal.SIGKILL)


def test_kill_tree_ignores_a_reused_pid() -> None:
    with subprocess.Popen(["sleep", "100"], start_new_session=True) as popen:
        proc = psutil.Process(popen.pid)
        assert kill_tree(popen.pid, proc.create_time() - 1) == []
        assert alive(proc)
        popen.kill()


def test_environment_for() -> None:
    env = dict(environment_for([("A", "1"), ("PYTHONUNBUFFERED", "0")], {"B": "2"}))
    assert env["A"] == "1" and env["B"] == "2" and env["PYTHONUNBUFFERED"] == "0"
    assert env["PATH"] == os.environ["PATH"]
    assert dict(environment_for(()))["PYTHONUNBUFFERED"] == "1"


# -- starting on a spawner thread ---------------------------------------------------------------


class Starts:
    """An on_started callback that records ``(pid, create_time)`` and what on_exit had said by then."""

    def __init__(self, exits: Collector) -> None:
        self.calls: list[tuple[int, float, int]] = []
        self._exits = exits

    def __call__(self, pid: int, create_time: float) -> None:
        self.calls.append((pid, create_time, len(self._exits.results)))


def test_a_start_is_announced_before_its_exit_can_be(reactor: ProcessReactor, tmp_path: Path) -> None:
    count = 100
    done = Collector(count)
    starts = Starts(done)
    spec = ProcessSpec(("/bin/true",), str(tmp_path), environment_for(()), str(tmp_path / "t.log"))
    for _ in range(count):
        reactor.start_process(spec, starts, done)
    results = done.wait()
    assert len(starts.calls) == count and all(pid > 0 for pid, _, _ in starts.calls)
    assert {(pid, created) for pid, created, _ in starts.calls} == {(r.pid, r.create_time) for r in results}
    # Each start was told while fewer exits had been reported than starts made so far.
    assert all(exits_before < index + 1 for index, (_, _, exits_before) in enumerate(starts.calls))


@pytest.mark.parametrize(
    "argv, cwd, error",
    [
        (("/bin/true",), "/nonexistent/dir", "No such file or directory: '/nonexistent/dir'"),
        (("no-such-tool-xyz",), ".", "No such file or directory: 'no-such-tool-xyz'"),
        (("/bin/echo", "a\0b"), ".", "embedded null byte"),
        (("/bin/pwd",), "/tmp\0/etc", "embedded null byte"),  # C would have run it in /tmp
        ((5,), ".", "argument of type 'int' is not iterable"),
    ],
)
def test_a_start_that_fails_in_any_way_is_reported_once(
    reactor: ProcessReactor, tmp_path: Path, argv: tuple[str, ...], cwd: str, error: str
) -> None:
    done = Collector()
    starts = Starts(done)
    spec = ProcessSpec(argv=argv, cwd=cwd, env=environment_for(()), log_path=str(tmp_path / "x.log"))
    reactor.start_process(spec, starts, done)
    result = done.one()
    reactor.stop()
    assert starts.calls == [(-1, 0.0, 0)] and len(done.results) == 1
    assert (result.outcome, result.error) == ("spawn_error", error)


def test_cancel_by_marker_reaches_a_process_whose_start_it_overtook(reactor: ProcessReactor, tmp_path: Path) -> None:
    done = Collector()
    marker = ("ORCHESTRATE_ATTEMPT_ID", "run/ws/t/1")
    spec = replace(shell("exec sleep 100", tmp_path), marker=marker, env=environment_for((marker,)))
    reactor.cancel_marked(marker)  # before the start: it must still be killed once it runs
    reactor.start_process(spec, Starts(done), done)
    result = done.one()
    assert (result.outcome, result.signal) == ("cancelled", signal.SIGTERM)


def test_cancel_by_marker_kills_only_that_attempt(reactor: ProcessReactor, tmp_path: Path) -> None:
    cancelled, kept = Collector(), Collector()
    markers = [("ORCHESTRATE_ATTEMPT_ID", f"run/ws/t/{n}") for n in (1, 2)]
    specs = [replace(shell("exec sleep 100", tmp_path), marker=m, env=environment_for((m,))) for m in markers]
    kept_started = threading.Event()
    reactor.start_process(specs[0], lambda *_: None, cancelled)
    reactor.start_process(specs[1], lambda *_: kept_started.set(), kept)
    assert kept_started.wait(DEADLINE_S)
    reactor.cancel_marked(markers[0])
    assert cancelled.one().outcome == "cancelled"
    assert kept.results == []
    reactor.stop()
    assert kept.one().outcome == "cancelled"  # by stop, not by the other attempt's cancel


def test_stop_reports_starts_still_queued_as_never_started(tmp_path: Path) -> None:
    reactor = ProcessReactor(spawners=1)
    reactor.start()
    count = 50
    done = Collector(count)
    starts = Starts(done)
    spec = ProcessSpec(("/bin/true",), str(tmp_path), environment_for(()), str(tmp_path / "t.log"))
    for _ in range(count):
        reactor.start_process(spec, starts, done)
    reactor.stop()
    results = done.wait(0)  # stop returned: every request was reported, started or not
    assert len(results) == count == len(starts.calls)
    never = [r for r in results if r.pid == -1]
    assert all(r.outcome == "cancelled" for r in never)
    assert sum(1 for pid, _, _ in starts.calls if pid == -1) == len(never)
    with pytest.raises(RuntimeError):
        reactor.start_process(spec, starts, done)
