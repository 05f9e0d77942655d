"""Warm python workers (adapters/pool.py, adapters/pyworker.py): fast, yet every guarantee of a
process per task holds — a task that hangs, leaks, crashes or exits is killed or failed with its
worker and everything it started, a fresh worker takes its place, and no task sees another's
cwd, environment, output or stale project modules.

Nothing here sleeps to wait: results arrive through a Collector (an event with a deadline), and
pids a callable writes to a file are polled for with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from adapters.leftovers import marked_processes
from adapters.pool import POOL_MARKER, CallSpec, WorkerPool
from adapters.process import ProcessReactor, environment_for
from adapters.pycall import NOT_RETURNED, callable_returned
from adapters.tools import MARKER_ATTEMPT_ID, PythonAdapter
from domain.outcomes import ProcessOutcome, ProcessResult
from domain.plan import TaskSpec
from planning.errors import PlanError
from planning.loader import load_plan
from tests.conftest import ledger, wait_until
from tests.test_process import DEADLINE_S, Collector, alive
from tests.test_resilience import write_json
from tests.test_signals import runtime_command, where_it_is

TASKS = '''
import os, subprocess, sys, threading, time
from pathlib import Path


def hello(text):
    print(text)
    print("err-" + text, file=sys.stderr)
    subprocess.run(["sh", "-c", "echo child-" + text], check=True)
    return text


def pid_then_hang(path):
    Path(path).write_text(str(os.getpid()))
    threading.Event().wait()


def spawn_then_hang(path):
    child = subprocess.Popen(["sleep", "3600"])
    Path(path).write_text(f"{os.getpid()} {child.pid}")
    threading.Event().wait()


def hog(mb, path):
    block = b"x" * (mb * 1024 * 1024)  # written, so resident
    Path(path).write_text(str(os.getpid()))
    threading.Event().wait()


def big_child(mb):
    subprocess.run([sys.executable, "-c", f"b = b'x' * ({mb} * 1024 * 1024)"], check=True)
    return mb


def leak(mb):
    # Held by a module that stays loaded (sys): it survives the task.
    sys.leaked = getattr(sys, "leaked", []) + [b"x" * (mb * 1024 * 1024)]
    return mb


def leave_a_thread():
    threading.Thread(target=threading.Event().wait, daemon=True).start()
    return "thread left"


def hard_exit(code):
    os._exit(code)


def soft_exit(code):
    sys.exit(code)


def refuse():
    return False


def explode():
    raise RuntimeError("boom")


def pollute():
    os.environ["POLLUTED"] = "yes"
    os.chdir("/")
    sys.path.append("/polluted")
    os.umask(0o077)
    signal_ = __import__("signal")
    signal_.signal(signal_.SIGUSR1, signal_.SIG_IGN)
    signal_.pthread_sigmask(signal_.SIG_BLOCK, [signal_.SIGUSR2])
    return os.environ.get("TASK_VAR")


def look():
    import signal
    return {
        "polluted": os.environ.get("POLLUTED"),
        "task_var": os.environ.get("TASK_VAR"),
        "cwd": os.getcwd(),
        "path0": sys.path[0],
        "polluted_path": "/polluted" in sys.path,
        "umask": os.umask(0o022),
        "sigusr1_default": signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL,
        "sigusr2_blocked": signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, []),
        "child_env": subprocess.run(["sh", "-c", "echo $TASK_VAR"], capture_output=True, text=True).stdout.strip(),
    }


def leave_background(path):
    child = subprocess.Popen(["sleep", "3600"], start_new_session=True)
    # A daemon: its parent exits at once, so it is orphaned (and adopted by the worker).
    daemon = subprocess.run(["sh", "-c", "setsid sleep 3600 > /dev/null 2>&1 & echo $!"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(path).write_text(f"{child.pid} {daemon}")
    return "left running"


def where_is(name):
    return __import__(name).__file__
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "tasks.py").write_text(TASKS)
    return directory


@pytest.fixture
def make_pool(tmp_path: Path) -> Iterator[Callable[..., WorkerPool]]:
    reactor = ProcessReactor(sample_interval_s=0.05, adopt_orphans=True)
    reactor.start()
    pools: list[WorkerPool] = []

    def make(**options: object) -> WorkerPool:
        options.setdefault("sample_interval_s", 0.05)
        pool = WorkerPool(reactor, log_path=str(tmp_path / "workers.log"), **options)  # type: ignore[arg-type]
        pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.stop()
    reactor.stop()


@pytest.fixture
def pool(make_pool: Callable[..., WorkerPool]) -> WorkerPool:
    return make_pool()


class Task:
    """One task started on the pool: its worker, its result when it ends, its log."""

    count = 0

    def __init__(self, pool: WorkerPool, cwd: Path, callable_: str, *args: object, env: dict | None = None,
                 log: Path | None = None, marker: tuple[str, str] | None = None, **limits: float) -> None:
        Task.count += 1
        self.log = log or cwd.parent / "logs" / f"task{Task.count}.log"
        self.collector = Collector()
        self.marker = marker or (MARKER_ATTEMPT_ID, f"test/{Task.count}")
        spec = CallSpec(
            callable=callable_, args=args, kwargs=(), cwd=str(cwd),
            env=environment_for(tuple((env or {}).items()), {self.marker[0]: self.marker[1]}),
            log_path=str(self.log), marker=self.marker, **limits,  # type: ignore[arg-type]
        )
        self.pid, self.create_time = pool.spawn(spec, self.collector)
        # Its identity, taken while it runs (the worker serves until the task is reported).
        self.worker = psutil.Process(self.pid) if self.pid > 0 else None

    def result(self) -> ProcessResult:
        return self.collector.one()

    def output(self) -> str:
        return self.log.read_text()

    @property
    def returned(self) -> bool:
        return callable_returned(str(self.log))


def run(pool: WorkerPool, cwd: Path, callable_: str, *args: object, **options: object) -> Task:
    task = Task(pool, cwd, callable_, *args, **options)  # type: ignore[arg-type]
    task.result()
    return task


def pids_in(path: Path, timeout: float = DEADLINE_S) -> list[psutil.Process]:
    """The pids a callable wrote to ``path``, as psutil handles (polled for, with a deadline)."""
    text = wait_until(lambda: path.exists() and path.read_text().strip(), timeout=timeout, what=f"{path.name}")
    return [psutil.Process(int(pid)) for pid in text.split()]


def gone(proc: psutil.Process) -> bool:
    return not alive(proc)


def pid_alive(pid: int) -> bool:
    try:
        return alive(psutil.Process(pid))
    except psutil.Error:
        return False


# -- the common case -----------------------------------------------------------------------------


def test_sequential_tasks_reuse_one_worker_each_with_its_own_log_and_result(pool: WorkerPool, project: Path) -> None:
    first = run(pool, project, "tasks:hello", "one")
    second = run(pool, project, "tasks:hello", "two")
    assert first.pid == second.pid > 0 and first.create_time == second.create_time
    for task, text in ((first, "one"), (second, "two")):
        result = task.result()
        assert (result.outcome, result.exit_code, result.signal) == (ProcessOutcome.EXITED, 0, None)
        assert result.pid == task.pid and result.duration_s > 0 and result.max_rss_bytes > 0
        assert task.returned
        # print, stderr and a child process's output: all in this task's log, nothing else.
        assert sorted(task.output().splitlines()) == sorted(
            [text, f"err-{text}", f"child-{text}", f"result: {text!r}"])
        assert Path(f"{task.log}.result.json").read_text() == f'"{text}"'
    assert len(pool.workers()) == 1


def test_a_worker_is_started_only_when_needed_and_never_more_than_ran_at_once(
    pool: WorkerPool, project: Path, tmp_path: Path
) -> None:
    assert pool.workers() == []
    hanging = [Task(pool, project, "tasks:pid_then_hang", str(tmp_path / f"hang{i}")) for i in range(3)]
    assert len({task.pid for task in hanging}) == 3
    for task in hanging:
        pool.cancel(task.pid, task.create_time)
        assert task.result().outcome is ProcessOutcome.CANCELLED
    for _ in range(5):
        run(pool, project, "tasks:refuse")
        assert len(pool.workers()) <= 3


@pytest.mark.parametrize(("callable_", "args", "code", "returned", "said"), [
    ("tasks:refuse", (), 1, True, "result: False"),
    ("tasks:explode", (), 1, False, "RuntimeError: boom"),
    ("tasks:soft_exit", (0,), 1, False, NOT_RETURNED),
    ("tasks:soft_exit", (3,), 1, False, NOT_RETURNED),
])
def test_failures_that_keep_the_worker(pool: WorkerPool, project: Path, callable_: str, args: tuple, code: int,
                                       returned: bool, said: str) -> None:
    task = run(pool, project, callable_, *args)
    result = task.result()
    assert (result.outcome, result.exit_code) == (ProcessOutcome.EXITED, code)
    assert task.returned is returned
    assert said in task.output()
    assert run(pool, project, "tasks:hello", "after").pid == task.pid


@pytest.mark.parametrize("code", [0, 5])
def test_os_exit_ends_the_worker_the_task_fails_and_a_new_worker_serves_the_next(
    pool: WorkerPool, project: Path, code: int
) -> None:
    task = run(pool, project, "tasks:hard_exit", code)
    result = task.result()
    # Exit status 0 without a result file: the executor fails it (NOT_RETURNED), as with pycall.
    assert (result.outcome, result.exit_code, result.signal) == (ProcessOutcome.EXITED, code, None)
    assert not task.returned
    after = run(pool, project, "tasks:hello", "after")
    assert after.result().exit_code == 0 and after.pid != task.pid


# -- killed with its worker ----------------------------------------------------------------------


def test_a_worker_killed_mid_task_fails_the_task_and_is_replaced(pool: WorkerPool, project: Path,
                                                                  tmp_path: Path) -> None:
    task = Task(pool, project, "tasks:pid_then_hang", str(tmp_path / "pid"))
    [worker] = pids_in(tmp_path / "pid")
    assert worker.pid == task.pid
    os.kill(worker.pid, signal.SIGKILL)
    result = task.result()
    assert (result.outcome, result.exit_code, result.signal) == (ProcessOutcome.EXITED, None, signal.SIGKILL)
    assert not task.returned
    after = run(pool, project, "tasks:hello", "after")
    assert after.result().exit_code == 0 and after.pid != task.pid


def test_a_hanging_callable_times_out_with_its_worker_and_children(pool: WorkerPool, project: Path,
                                                                    tmp_path: Path) -> None:
    task = Task(pool, project, "tasks:spawn_then_hang", str(tmp_path / "pids"), timeout_s=0.5)
    worker, child = pids_in(tmp_path / "pids")
    result = task.result()
    assert result.outcome is ProcessOutcome.TIMEOUT and 0.5 <= result.duration_s < DEADLINE_S
    assert gone(worker) and gone(child)
    after = run(pool, project, "tasks:hello", "after")
    assert after.result().exit_code == 0 and after.pid != task.pid


def test_a_callable_over_its_memory_limit_is_killed_with_its_worker(pool: WorkerPool, project: Path,
                                                                    tmp_path: Path) -> None:
    task = Task(pool, project, "tasks:hog", 200, str(tmp_path / "hog"), memory_limit_mb=100, timeout_s=60)
    result = task.result()
    assert result.outcome is ProcessOutcome.RESOURCE_LIMIT
    assert result.max_rss_bytes > 100 * 1024 * 1024
    assert task.worker is not None and task.worker.create_time() == task.create_time and gone(task.worker)
    after = run(pool, project, "tasks:hello", "after")
    assert after.result().exit_code == 0 and after.pid != task.pid


def test_cancel_kills_only_the_attempt_named(pool: WorkerPool, project: Path, tmp_path: Path) -> None:
    task = Task(pool, project, "tasks:spawn_then_hang", str(tmp_path / "pids"))
    worker, child = pids_in(tmp_path / "pids")
    pool.cancel(task.pid, task.create_time, marker=(MARKER_ATTEMPT_ID, "some/other/attempt"))
    pool.workers()  # a round trip: the cancel above has been handled
    assert alive(worker) and not task.collector.results
    pool.cancel(task.pid, task.create_time, marker=task.marker)
    assert task.result().outcome is ProcessOutcome.CANCELLED
    assert gone(worker) and gone(child)


def test_cancel_by_marker_alone_finds_the_attempts_worker(pool: WorkerPool, project: Path, tmp_path: Path) -> None:
    task = Task(pool, project, "tasks:spawn_then_hang", str(tmp_path / "pids"))
    worker, child = pids_in(tmp_path / "pids")
    pool.cancel_marked((MARKER_ATTEMPT_ID, "some/other/attempt"))
    pool.workers()  # a round trip: the cancel above has been handled
    assert alive(worker) and not task.collector.results
    pool.cancel_marked(task.marker)
    assert task.result().outcome is ProcessOutcome.CANCELLED
    assert gone(worker) and gone(child)


def test_a_start_without_waiting_is_announced_before_its_end(pool: WorkerPool, project: Path) -> None:
    """``start_call`` returns at once; the worker's pid is announced before the reply is reported,
    for a task that ends at once as for one refused at the door (a missing cwd)."""
    count = 20
    done = Collector(count + 1)
    announced: list[tuple[int, int]] = []  # (pid, reports already made)

    def started(pid: int, create_time: float) -> None:
        announced.append((pid, len(done.results)))

    marker = (MARKER_ATTEMPT_ID, "test/no-wait")
    for _ in range(count):
        spec = CallSpec(callable="tasks:hello", args=("x",), kwargs=(), cwd=str(project),
                        env=environment_for((), {marker[0]: marker[1]}),
                        log_path=str(project.parent / "logs" / "nowait.log"), marker=marker)
        pool.start_call(spec, started, done)
    missing = CallSpec(callable="tasks:hello", args=("x",), kwargs=(), cwd=str(project / "missing"),
                       env=environment_for(()), log_path=str(project.parent / "logs" / "missing.log"))
    pool.start_call(missing, started, done)
    results = done.wait()
    assert len(announced) == count + 1
    assert all(reports_before <= index for index, (_, reports_before) in enumerate(announced))
    assert sorted(pid for pid, _ in announced if pid > 0) == sorted(r.pid for r in results if r.pid > 0)
    assert [r.outcome for r in results].count(ProcessOutcome.SPAWN_ERROR) == 1
    assert sum(pid == -1 for pid, _ in announced) == 1  # the refused one: announced, then reported


def test_stopping_the_pool_kills_every_worker_and_reports_nothing_when_asked(
    make_pool: Callable[..., WorkerPool], project: Path, tmp_path: Path
) -> None:
    pool = make_pool()
    task = Task(pool, project, "tasks:spawn_then_hang", str(tmp_path / "pids"))
    idle = run(pool, project, "tasks:refuse")
    worker, child = pids_in(tmp_path / "pids")
    idle_worker = psutil.Process(idle.pid)
    pool.stop(report=False)
    assert gone(worker) and gone(child) and gone(idle_worker)
    assert not task.collector.results
    with pytest.raises(RuntimeError):
        Task(pool, project, "tasks:refuse")


# -- recycled after the task ---------------------------------------------------------------------


def test_a_leak_under_the_limit_returns_and_its_worker_is_recycled(make_pool: Callable[..., WorkerPool],
                                                                    project: Path) -> None:
    pool = make_pool(rss_growth_limit_mb=40)
    small = run(pool, project, "tasks:leak", 1)
    assert run(pool, project, "tasks:refuse").pid == small.pid  # 1 MiB: kept
    task = run(pool, project, "tasks:leak", 80)
    result = task.result()
    assert (result.outcome, result.exit_code) == (ProcessOutcome.EXITED, 0) and task.returned
    assert result.max_rss_bytes > 80 * 1024 * 1024
    worker = psutil.Process(task.pid) if psutil.pid_exists(task.pid) else None
    after = run(pool, project, "tasks:hello", "after")
    assert after.pid != task.pid
    if worker is not None:
        wait_until(lambda: gone(worker), timeout=DEADLINE_S, what="the leaking worker to be killed")
    # Once the reactor has reported the old one's end, the pool holds only its replacement.
    wait_until(lambda: len(pool.workers()) == 1, timeout=DEADLINE_S, what="one worker left")


def test_a_short_lived_big_child_counts_in_the_tasks_peak_rss(make_pool: Callable[..., WorkerPool],
                                                               project: Path) -> None:
    pool = make_pool(sample_interval_s=3600)  # no sample sees it: the worker's rusage tells
    task = run(pool, project, "tasks:big_child", 150)
    assert task.result().exit_code == 0 and task.result().max_rss_bytes > 150 * 1024 * 1024


def test_a_worker_left_with_a_thread_running_is_recycled(pool: WorkerPool, project: Path) -> None:
    task = run(pool, project, "tasks:leave_a_thread")
    assert task.result().exit_code == 0
    assert run(pool, project, "tasks:refuse").pid != task.pid


def test_processes_left_running_after_the_return_are_killed_before_the_task_is_reported(
    pool: WorkerPool, project: Path, tmp_path: Path
) -> None:
    task = run(pool, project, "tasks:leave_background", str(tmp_path / "pids"))
    assert task.result().exit_code == 0
    child, daemon = pids_in(tmp_path / "pids")
    assert gone(child) and gone(daemon)
    # The worker itself stays and serves the next task.
    assert run(pool, project, "tasks:refuse").pid == task.pid


def test_a_worker_started_before_a_package_was_installed_is_replaced(
    make_pool: Callable[..., WorkerPool], project: Path, tmp_path: Path
) -> None:
    site_packages = tmp_path / "site-packages"
    site_packages.mkdir()
    pool = make_pool(site_dirs=[str(site_packages)])
    first = run(pool, project, "tasks:refuse")
    assert run(pool, project, "tasks:refuse").pid == first.pid
    (site_packages / "newpkg.py").write_text("")  # what an install does to the directory
    after = run(pool, project, "tasks:refuse")
    assert after.pid != first.pid
    wait_until(lambda: gone(first.worker), timeout=DEADLINE_S, what="the stale worker to be killed")
    assert run(pool, project, "tasks:refuse").pid == after.pid


# -- nothing of one task is seen by the next -----------------------------------------------------


def test_cwd_environment_path_umask_signals_and_mask_are_the_tasks_own(pool: WorkerPool, project: Path,
                                                                   tmp_path: Path) -> None:
    first = run(pool, project, "tasks:pollute", env={"TASK_VAR": "first"})
    assert Path(f"{first.log}.result.json").read_text() == '"first"'
    other = tmp_path / "other"
    other.mkdir()
    (other / "tasks.py").write_text(TASKS)
    second = run(pool, other, "tasks:look", env={"TASK_VAR": "second"})
    assert second.pid == first.pid
    umask = os.umask(0o022)
    os.umask(umask)
    seen = json.loads(Path(f"{second.log}.result.json").read_text())
    assert seen == {
        "polluted": None, "task_var": "second", "cwd": str(other), "path0": str(other), "polluted_path": False,
        "umask": umask, "sigusr1_default": True, "sigusr2_blocked": False, "child_env": "second",
    }


def test_an_edited_project_module_is_imported_afresh(pool: WorkerPool, project: Path) -> None:
    module = project / "settings.py"
    module.write_text("VALUE = 1\n\ndef value():\n    return VALUE\n")
    first = run(pool, project, "settings:value")
    module.write_text("VALUE = 22222\n\ndef value():\n    return VALUE\n")
    second = run(pool, project, "settings:value")
    assert second.pid == first.pid
    assert Path(f"{first.log}.result.json").read_text() == "1"
    assert Path(f"{second.log}.result.json").read_text() == "22222"
    # A module added between tasks is found too.
    (project / "fresh.py").write_text("def value():\n    return 'fresh'\n")
    third = run(pool, project, "fresh:value")
    assert Path(f"{third.log}.result.json").read_text() == '"fresh"' and third.pid == first.pid


def test_a_projects_own_module_wins_over_a_warm_one_of_the_same_name(pool: WorkerPool, project: Path,
                                                                      tmp_path: Path) -> None:
    first = run(pool, project, "tasks:where_is", "colorsys")  # the standard library's, now warm
    assert "project" not in Path(f"{first.log}.result.json").read_text()
    shadowing = tmp_path / "shadowing"
    shadowing.mkdir()
    (shadowing / "colorsys.py").write_text("def where():\n    return 'the project'\n")
    second = run(pool, shadowing, "colorsys:where")
    assert second.pid == first.pid
    assert Path(f"{second.log}.result.json").read_text() == '"the project"'


def test_every_process_of_a_task_carries_its_markers_and_its_workers(pool: WorkerPool, project: Path,
                                                                     tmp_path: Path) -> None:
    task = Task(pool, project, "tasks:spawn_then_hang", str(tmp_path / "pids"))
    worker, child = pids_in(tmp_path / "pids")
    environ = child.environ()
    assert environ[task.marker[0]] == task.marker[1]
    assert environ[POOL_MARKER] == worker.environ()[POOL_MARKER]
    pool.cancel(task.pid, task.create_time)
    task.result()


# -- what cannot start -----------------------------------------------------------------------------


def test_a_missing_cwd_or_an_unusable_log_is_a_spawn_error(pool: WorkerPool, project: Path, tmp_path: Path) -> None:
    missing = Task(pool, tmp_path / "missing", "tasks:refuse")
    assert (missing.pid, missing.create_time) == (-1, 0.0)
    result = missing.result()
    assert result.outcome is ProcessOutcome.SPAWN_ERROR and "missing" in result.error
    (tmp_path / "a-file").write_text("")
    unusable = Task(pool, project, "tasks:refuse", log=tmp_path / "a-file" / "task.log")
    result = unusable.result()
    assert result.outcome is ProcessOutcome.SPAWN_ERROR and result.pid == -1 and "a-file" in result.error
    assert run(pool, project, "tasks:hello", "after").pid == unusable.pid


def test_tasks_from_many_threads_are_each_reported_once(pool: WorkerPool, project: Path) -> None:
    tasks: list[Task] = []
    lock = threading.Lock()

    def start() -> None:
        for _ in range(10):
            task = run(pool, project, "tasks:refuse")
            with lock:
                tasks.append(task)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S * 4)
    assert len(tasks) == 40
    assert all(len(task.collector.results) == 1 and task.result().exit_code == 1 for task in tasks)
    assert len(pool.workers()) <= 4


# -- through the real command line -----------------------------------------------------------------

RUNTIME_TASKS = '''
import os, subprocess, sys, threading
from pathlib import Path


def value():
    import settings
    return settings.VALUE


def pid():
    return os.getpid()


def hang_with_child(path, first_attempt_only=False):
    if first_attempt_only and os.environ["ORCHESTRATE_ATTEMPT"] != "1":
        return "resumed"
    child = subprocess.Popen(["sleep", "3600"])
    Path(path).write_text(f"{os.getpid()} {child.pid}")
    threading.Event().wait()


def hog(mb):
    block = b"x" * (mb * 1024 * 1024)
    threading.Event().wait()


def hard_exit():
    os._exit(0)
'''


def runtime_project(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(RUNTIME_TASKS)
    (tmp_path / "settings.py").write_text("VALUE = 1\n")
    return tmp_path


def attempts(tmp_path: Path) -> dict[str, dict]:
    rows = ledger(tmp_path).execute(
        "select step_name, status, error_class, message, pid, result_json from step_attempts order by id").fetchall()
    return {row["step_name"]: dict(row) for row in rows}


# A runtime's start (interpreter, imports, plan, ledger) on a loaded machine takes a while.
RUNTIME_DEADLINE_S = 60.0


def start_runtime(tmp_path: Path, plan: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(runtime_command("run", str(plan), *args), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def task_pids(tmp_path: Path, name: str) -> list[psutil.Process]:
    """What a callable of a runtime's task wrote to ``name``; on a timeout, where the run is."""
    try:
        return pids_in(tmp_path / name, timeout=RUNTIME_DEADLINE_S)
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}; {where_it_is(tmp_path)}") from None


def pool_processes(runtime_pid: int) -> list[int]:
    """Live processes of the workers of the runtime ``runtime_pid``: the workers and what their
    tasks started (their marker's value starts with the runtime's pid)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if alive(proc) and proc.environ().get(POOL_MARKER, "").startswith(f"{runtime_pid}-"):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_default_tasks_share_a_worker_and_isolated_ones_get_a_fresh_interpreter_each(
    tmp_path: Path, orchestrate
) -> None:
    runtime_project(tmp_path)
    tasks = [{"id": f"warm{i}", "tool": "python", "callable": "jobs:pid"} for i in range(3)]
    tasks += [{"id": f"fresh{i}", "tool": "python", "callable": "jobs:pid", "isolation": "process"} for i in range(3)]
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": tasks})
    result = orchestrate("run", str(plan), "-j", "1")
    assert result.code == 0, result.out + result.err
    seen = attempts(tmp_path)
    warm = {seen[f"w/warm{i}"]["pid"] for i in range(3)}
    fresh = [seen[f"w/fresh{i}"]["pid"] for i in range(3)]
    assert len(warm) == 1 and len(set(fresh)) == 3 and not warm & set(fresh)
    # The pid each callable saw is the pid the ledger recorded for its attempt.
    assert all(int(row["result_json"]) == row["pid"] for row in seen.values())


def test_a_project_module_edited_between_tasks_is_seen_by_the_next(tmp_path: Path, orchestrate) -> None:
    runtime_project(tmp_path)
    edit = "printf 'VALUE = 22222\\n' > settings.py"
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "before", "tool": "python", "callable": "jobs:value"},
        {"id": "edit", "tool": "shell", "command": edit, "depends_on": ["before"]},
        {"id": "after", "tool": "python", "callable": "jobs:value", "depends_on": ["edit"]}]})
    result = orchestrate("run", str(plan), "-j", "1")
    assert result.code == 0, result.out + result.err
    seen = attempts(tmp_path)
    assert (seen["w/before"]["result_json"], seen["w/after"]["result_json"]) == ("1", "22222")
    assert seen["w/before"]["pid"] == seen["w/after"]["pid"]


def test_exits_crashes_timeouts_and_memory_limits_fail_python_tasks(tmp_path: Path) -> None:
    runtime_project(tmp_path)
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "crash", "tool": "python", "callable": "jobs:hang_with_child", "args": ["crash.pids"],
         "priority": 9},
        {"id": "exit", "tool": "python", "callable": "jobs:hard_exit"},
        {"id": "sysexit", "tool": "python", "callable": "sys:exit", "args": [0]},
        {"id": "hang", "tool": "python", "callable": "jobs:hang_with_child", "args": ["hang.pids"],
         "timeout_s": 1},
        {"id": "hog", "tool": "python", "callable": "jobs:hog", "args": [200], "memory_limit_mb": 100,
         "timeout_s": 60},
        {"id": "fine", "tool": "python", "callable": "jobs:pid"}]})
    process = start_runtime(tmp_path, plan, "-j", "1")
    try:
        worker, child = task_pids(tmp_path, "crash.pids")
        os.kill(worker.pid, signal.SIGKILL)  # from outside, mid-task
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1, out + err
    seen = attempts(tmp_path)
    assert (seen["w/crash"]["status"], seen["w/crash"]["error_class"]) == ("FAILED", "command_failed")
    assert "killed by signal 9" in seen["w/crash"]["message"]
    assert seen["w/exit"]["status"] == "FAILED" and NOT_RETURNED in seen["w/exit"]["message"]
    assert seen["w/sysexit"]["status"] == "FAILED" and NOT_RETURNED in seen["w/sysexit"]["message"]
    assert (seen["w/hang"]["status"], seen["w/hang"]["error_class"]) == ("TIMEOUT", "timeout")
    assert (seen["w/hog"]["status"], seen["w/hog"]["error_class"]) == ("FAILED", "resource_limit")
    assert seen["w/fine"]["status"] == "COMPLETED"
    hang_pids = [int(pid) for pid in (tmp_path / "hang.pids").read_text().split()]
    assert gone(child) and not any(pid_alive(pid) for pid in hang_pids)
    # Each of those took its worker with it: four workers died, so the last task ran on a fifth;
    # sys.exit is caught in the worker, which served another task after it.
    pids = [seen[f"w/{t}"]["pid"] for t in ("crash", "exit", "hang", "hog", "fine")]
    assert len(set(pids)) == 5
    assert pids.count(seen["w/sysexit"]["pid"]) == 1


def test_a_cancelled_python_task_is_killed_with_its_worker(tmp_path: Path, orchestrate) -> None:
    runtime_project(tmp_path)
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "hang", "tool": "python", "callable": "jobs:hang_with_child", "args": ["hang.pids"]}]})
    process = start_runtime(tmp_path, plan)
    try:
        worker, child = task_pids(tmp_path, "hang.pids")
        run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
        cancelled = orchestrate("cancel", run_id, "w/hang")
        assert cancelled.code == 0, cancelled.err
        process.communicate(timeout=60)
    finally:
        process.kill()
    assert ledger(tmp_path).execute("select state from tasks").fetchone()[0] == "CANCELLED"
    assert gone(worker) and gone(child)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_or_killed_runtime_leaves_no_worker_and_the_run_resumes(
    tmp_path: Path, orchestrate, how: str
) -> None:
    runtime_project(tmp_path)
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": f"hang{i}", "tool": "python", "callable": "jobs:hang_with_child",
         "args": [f"hang{i}.pids", True]} for i in range(3)]})
    process = start_runtime(tmp_path, plan, "-j", "3")
    try:
        trees = [task_pids(tmp_path, f"hang{i}.pids") for i in range(3)]
        workers = [worker for worker, _ in trees]
        children = [child for _, child in trees]
        # Every process of the pool carries its marker: the workers and what their tasks started.
        assert sorted(pool_processes(process.pid)) == sorted(p.pid for p in workers + children)
        runtime = process.pid
        process.send_signal(getattr(signal, how))
        process.communicate(timeout=60)
    finally:
        process.kill()
    # PR_SET_PDEATHSIG: a worker never outlives its runtime, however it ended.
    wait_until(lambda: all(gone(w) for w in workers), timeout=RUNTIME_DEADLINE_S, what="the workers to die")
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    if how == "SIGTERM":
        assert process.returncode == 128 + signal.SIGTERM
        assert pool_processes(runtime) == [] and marked_processes(run_id) == []
    # A SIGKILL'd runtime could kill nothing: the callables' children carry the run's markers, and
    # resuming kills them first.
    resumed = orchestrate("execute", "--run", run_id)
    assert resumed.code == 0, resumed.out + resumed.err
    assert pool_processes(runtime) == [] and marked_processes(run_id) == []
    assert {row["result_json"] for row in attempts(tmp_path).values()} == {'"resumed"'}


# -- the plan field ------------------------------------------------------------------------------------


def test_isolation_is_for_python_tasks_only_and_kept_out_of_plans_that_do_not_set_it(tmp_path: Path) -> None:
    plan_path = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "a", "tool": "shell", "command": "true", "isolation": "process"},
        {"id": "b", "tool": "python", "callable": "m:f", "isolation": "thread"}]})
    with pytest.raises(PlanError) as raised:
        load_plan(plan_path)
    text = str(raised.value)
    assert "$.tasks[0].tool: 'tool' must be python (the only tool 'isolation' applies to), got 'shell'" in text
    assert "$.tasks[1].isolation: 'isolation' must be one of worker, process, got 'thread'" in text

    write_json(plan_path, {"id": "w", "tasks": [
        {"id": "a", "tool": "python", "callable": "m:f", "isolation": "process"},
        {"id": "b", "tool": "python", "callable": "m:f"}]})
    plan = load_plan(plan_path)
    fresh, warm = plan.tasks
    assert (fresh.isolation, warm.isolation) == ("process", None)
    assert "isolation" not in warm.to_json()
    assert TaskSpec.from_json(fresh.to_json()) == fresh
    assert not PythonAdapter.uses_worker(fresh) and PythonAdapter.uses_worker(warm)
