"""Starting an attempt's process while the runtime stops: a stopped reactor or worker pool
refuses the start, and the executor asking for it must not crash over it (a crashed executor
fails every attempt it holds as "executor crashed", where the stop records them interrupted).

Found by sending SIGHUP to the quickstart while a coding agent's acceptance check was starting:
three tasks ended FAILED "executor shell crashed: RuntimeError: ProcessReactor is not running"
and the run said "0 tasks interrupted"."""

from __future__ import annotations

import pykka
import pytest

from actors.attempts import start_for_attempt
from adapters.pool import CallSpec, WorkerPool
from adapters.process import ProcessReactor, ProcessSpec, StarterStopped
from domain.plan import TaskSpec
from messages import ExecuteTask


class Heard(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[object] = []

    def on_receive(self, message: object) -> object:
        if message == "heard":
            return list(self.messages)
        self.messages.append(message)
        return None


@pytest.fixture
def executor():
    ref = Heard.start()
    yield ref
    ref.stop()


def _request(tmp_path) -> ExecuteTask:
    task = TaskSpec(workstream_id="w", id="check", tool="shell", command="true", cwd=str(tmp_path))
    return ExecuteTask("run-1", task, 1, str(tmp_path / "check.log"))


def test_a_stopped_reactor_refuses_a_start_and_the_attempt_is_left_to_the_stop(tmp_path, executor):
    reactor = ProcessReactor()
    reactor.start()
    reactor.stop()
    spec = ProcessSpec(argv=("true",), cwd=str(tmp_path), env=(), log_path=str(tmp_path / "check.log"))
    with pytest.raises(StarterStopped):
        reactor.start_process(spec, lambda pid, created: None, lambda result: None)
    started = []
    start_for_attempt(reactor, executor, spec, _request(tmp_path), "check", 0,
                      on_started=lambda pid, created: started.append(pid))
    assert started == [] and executor.ask("heard") == [], "nothing started, nothing reported"
    assert not (tmp_path / "check.log").exists()


def test_a_stopped_worker_pool_refuses_a_call_the_same_way(tmp_path, executor):
    reactor = ProcessReactor()
    reactor.start()
    pool = WorkerPool(reactor)
    pool.start()
    pool.stop(report=False)
    reactor.stop()
    call = CallSpec(callable="json:dumps", args=(1,), kwargs=(), cwd=str(tmp_path), env=(),
                    log_path=str(tmp_path / "call.log"))
    start_for_attempt(pool, executor, call, _request(tmp_path), "tool")
    assert executor.ask("heard") == []
