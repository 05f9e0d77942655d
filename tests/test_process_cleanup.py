"""Nothing of a task outlives it: escapees that called setsid, orphans, zombies.

The runtime's reactor is a child subreaper: a task's orphans re-parent to it, it kills every
process carrying the attempt's marker whenever the attempt's process ends (however it ends), and
it reaps the orphans that die, without ever taking the exit status of a child someone else
waits for.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from adapters.leftovers import marked_processes
from adapters.process import ProcessReactor, ProcessSpec, environment_for
from adapters.tools import MARKER_ATTEMPT_ID
from tests.conftest import ledger, wait_until
from tests.test_process import DEADLINE_S, Collector, Fifo, alive

PR_GET_CHILD_SUBREAPER = 37


def marked(marker: tuple[str, str]) -> list[int]:
    """Live processes whose environment holds the marker."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(marker[0]) == marker[1]:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def is_subreaper() -> bool:
    flag = ctypes.c_int(-1)
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0
    return flag.value == 1


def marked_shell(command: str, cwd: Path, **kwargs: object) -> ProcessSpec:
    """``command`` with a fresh attempt marker in its environment, as executors start tools."""
    marker = (MARKER_ATTEMPT_ID, f"test/{uuid.uuid4().hex}")
    return ProcessSpec(
        argv=("/bin/sh", "-c", command),
        cwd=str(cwd),
        env=environment_for((marker,)),
        log_path=str(cwd / "logs" / "task.log"),
        marker=marker,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def reactor() -> Iterator[ProcessReactor]:
    reactor = ProcessReactor(sample_interval_s=0.05, adopt_orphans=True)
    reactor.start()
    yield reactor
    reactor.stop()


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    fifo = Fifo(tmp_path)
    yield fifo
    fifo.close()


ESCAPEES = 20


@pytest.mark.parametrize("ending", ["success", "failure", "timeout", "cancel"])
def test_setsid_escapees_die_with_the_attempt_however_it_ends(
    reactor: ProcessReactor, tmp_path: Path, fifo: Fifo, ending: str
) -> None:
    # Each escapee reports its pid once it is in a session of its own; the task then waits at
    # the gate (success, failure) or sleeps until it is timed out or cancelled.
    escape = f'for i in $(seq {ESCAPEES}); do setsid sh -c "echo \\$\\$ > {fifo.path}; exec sleep 96" & done'
    rest = {"success": f"read x < {fifo.gate}; echo ok", "failure": f"read x < {fifo.gate}; exit 1"}
    spec = marked_shell(f"{escape}; {rest.get(ending, 'exec sleep 100')}", tmp_path,
                        timeout_s=1.0 if ending == "timeout" else None)
    done = Collector()
    pid, create_time = reactor.spawn(spec, done)
    escapees = [fifo.read_pids()[0] for _ in range(ESCAPEES)]
    assert all(os.getsid(p.pid) == p.pid for p in escapees), "each escapee leads a session of its own"
    if ending == "cancel":
        reactor.cancel(pid, create_time)
    else:
        fifo.release()
    result = done.one()
    expected = {"success": ("exited", 0), "failure": ("exited", 1), "timeout": ("timeout", None),
                "cancel": ("cancelled", None)}[ending]
    assert (result.outcome, result.exit_code) == expected
    # Reported only once nothing of it is left: no waiting here.
    assert [p.pid for p in escapees if alive(p)] == []
    assert marked(spec.marker) == []


def test_orphans_re_parent_to_the_runtime_and_are_reaped_when_they_die(
    reactor: ProcessReactor, tmp_path: Path, fifo: Fifo
) -> None:
    assert is_subreaper()
    # The subshell exits at once, orphaning its setsid child while the task still runs.
    spec = marked_shell(f"(setsid sh -c 'echo $$ > {fifo.path}; read x < {fifo.gate}' &); exec sleep 100", tmp_path)
    done = Collector()
    pid, create_time = reactor.spawn(spec, done)
    orphan = fifo.read_pids()[0]
    wait_until(lambda: orphan.ppid() == os.getpid(), timeout=DEADLINE_S, what="the orphan to re-parent to us")
    fifo.release()  # it exits on its own: a zombie child of ours, until the reactor reaps it

    def reaped() -> bool:
        try:
            return psutil.Process(orphan.pid).create_time() != orphan.create_time()
        except psutil.NoSuchProcess:
            return True

    wait_until(reaped, timeout=DEADLINE_S, what="the dead orphan to be reaped")
    reactor.cancel(pid, create_time)
    assert done.one().outcome == "cancelled"


def test_the_subreaper_attribute_lasts_as_long_as_the_reactor() -> None:
    reactor = ProcessReactor(adopt_orphans=True)
    assert not is_subreaper()
    reactor.start()
    try:
        assert is_subreaper()
    finally:
        reactor.stop()
    assert not is_subreaper()


def test_reaping_orphans_never_takes_the_exit_status_of_a_child_someone_waits_for(
    reactor: ProcessReactor, tmp_path: Path
) -> None:
    tasks = 60
    done = Collector(tasks)
    codes: list[int] = []

    def spawn_some(count: int) -> None:
        for _ in range(count):
            # Every task leaves an orphan that dies at once: the reaper has work all along.
            reactor.spawn(marked_shell("(setsid true &); exit 7", tmp_path), done)

    def run_children() -> None:
        codes.extend(subprocess.run(["/bin/sh", "-c", "exit 5"], check=False).returncode for _ in range(tasks))

    threads = [threading.Thread(target=spawn_some, args=(tasks // 3,)) for _ in range(3)]
    threads.append(threading.Thread(target=run_children))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S * 4)
    assert [(r.outcome, r.exit_code) for r in done.wait(DEADLINE_S * 4)] == [("exited", 7)] * tasks
    assert codes == [5] * tasks


def test_setsid_escapees_of_a_task_that_exits_normally_do_not_outlive_the_run(tmp_path: Path, orchestrate) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"id": "w", "tasks": [{"id": "escape", "tool": "shell", '
                    '"command": "for i in $(seq 20); do setsid sleep 96 & done; echo ok"}]}')
    result = orchestrate("run", str(plan))
    assert result.code == 0, result.out + result.err
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    assert marked_processes(run_id) == []
