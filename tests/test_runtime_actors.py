"""The actors together, in process: Supervisor, Ledger, Router, Scheduler and Executors."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path

import pykka
import pytest

from actors.base import SupervisedActor
from actors.directory import Directory
from actors.runtime import Runtime, RuntimeOptions
from actors.supervisor import SupervisorActor
from actors.timers import TimerService
from domain.supervision import ChildSpec, SupervisorSpec
from messages.supervisor import StartChildren
from persistence.clock import utc_now_iso
from persistence.db import make_engine, sqlite_url
from persistence.migrate import init_db
from persistence.store import Store
from planning.loader import load_plan
from planning.request import build_request
from tests.conftest import ROOT


@pytest.fixture
def store(tmp_path):
    url = sqlite_url(tmp_path / ".state" / "orchestration.db")
    init_db(url)
    store = Store(make_engine(url), tmp_path / ".state" / "transitions.jsonl")
    yield store
    store.close()


def execute(store: Store, tmp_path: Path, document: dict, concurrency: int = 4) -> str:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document))
    plan = load_plan(path)
    run_id = store.create_run(build_request(plan, concurrency=concurrency).to_json(), plan.to_json(), at=utc_now_iso())
    runtime = Runtime(store, RuntimeOptions(state_dir=tmp_path / ".state", concurrency=concurrency))
    runtime.start()
    try:
        runtime.submit(run_id)
        result = runtime.wait(run_id)
    finally:
        runtime.stop()
    assert result.run_id == run_id
    return run_id


def states(store: Store, run_id: str) -> dict[str, str]:
    return {t["task_key"]: t["state"] for t in store.get_tasks(run_id)}


def test_the_ledger_records_the_run_lifecycle_as_events_in_order(store, tmp_path):
    run_id = execute(store, tmp_path, {"id": "w", "tasks": [
        {"id": "a", "tool": "shell", "command": "true"},
        {"id": "b", "tool": "shell", "command": "true", "depends_on": ["a"]}]})
    events = [e["event_type"] for e in store.get_events(run_id) if e["event_type"] != "STATE_CHANGED"]
    assert events == ["RUN_CREATED", "EXECUTION_REQUEST_VALIDATED", "TASK_STARTED", "TASK_COMPLETED",
                      "TASK_STARTED", "TASK_COMPLETED", "EXECUTION_FINISHED"]
    assert store.get_run(run_id)["status"] == "completed"
    run_changes = [e["payload"]["to"] for e in store.get_events(run_id, types=["STATE_CHANGED"])
                   if e["payload"]["entity"] == "run"]
    assert run_changes == ["running", "completed"]
    ws_changes = [e["payload"]["to"] for e in store.get_events(run_id, types=["STATE_CHANGED"])
                  if e["payload"]["entity"] == "workstream"]
    assert ws_changes == ["ready", "editing", "done"]
    decisions = store.get_routing_decisions(run_id)
    assert [(d["task_key"], d["chosen"]) for d in decisions] == [("w/a", "shell"), ("w/b", "shell")]


def test_transitions_are_mirrored_to_transitions_jsonl(store, tmp_path):
    run_id = execute(store, tmp_path, {"id": "w", "tasks": [{"id": "a", "tool": "shell", "command": "true"}]})
    lines = [json.loads(l) for l in (tmp_path / ".state" / "transitions.jsonl").read_text().splitlines()]
    task_moves = [(l["from"], l["to"]) for l in lines if l["run_id"] == run_id and l["entity"] == "task"]
    assert task_moves == [("PENDING", "QUEUED"), ("QUEUED", "IN_PROGRESS"), ("IN_PROGRESS", "COMPLETED")]


def test_python_tasks_call_module_function_with_args_in_the_task_cwd(store, tmp_path):
    out = tmp_path / "args.json"
    run_id = execute(store, tmp_path, {"id": "w", "tasks": [
        {"id": "call", "tool": "python", "callable": "tests.sample_callables:write_args",
         "args": [str(out), 1, "two"], "kwargs": {"three": 3}, "cwd": str(ROOT)}]})
    assert states(store, run_id) == {"w/call": "COMPLETED"}
    assert json.loads(out.read_text()) == {"args": [1, "two"], "kwargs": {"three": 3}, "cwd": str(ROOT)}


def test_a_python_task_that_raises_or_returns_false_fails_with_the_traceback_logged(store, tmp_path):
    run_id = execute(store, tmp_path, {"id": "w", "tasks": [
        {"id": "raise", "tool": "python", "callable": "tests.sample_callables:explode", "args": ["kaboom"], "cwd": str(ROOT)},
        {"id": "false", "tool": "python", "callable": "tests.sample_callables:refuse", "cwd": str(ROOT)}]})
    assert states(store, run_id) == {"w/raise": "FAILED", "w/false": "FAILED"}
    log_path = next(a["log_path"] for a in store.get_attempts(run_id) if a["step_name"] == "w/raise")
    assert "RuntimeError: kaboom" in Path(log_path).read_text()


def test_a_flaky_task_is_retried_with_backoff_until_it_succeeds(store, tmp_path):
    counter = tmp_path / "calls"
    run_id = execute(store, tmp_path, {"id": "w", "tasks": [
        {"id": "flaky", "tool": "python", "callable": "tests.sample_callables:fail_until",
         "args": [str(counter), 2], "max_attempts": 3, "cwd": str(ROOT)}]})
    assert states(store, run_id) == {"w/flaky": "COMPLETED"}
    attempts = store.get_attempts(run_id)
    assert [a["status"] for a in attempts] == ["FAILED", "FAILED", "COMPLETED"]
    starts = [datetime.fromisoformat(a["started_at"].replace("Z", "+00:00")) for a in attempts]
    ends = [datetime.fromisoformat(a["completed_at"].replace("Z", "+00:00")) for a in attempts]
    assert (starts[1] - ends[0]).total_seconds() >= 0.5  # base delay of the default policy
    assert (starts[2] - ends[1]).total_seconds() >= 1.0  # doubled
    errors = store.get_errors(run_id)
    assert len(errors) == 1 and errors[0]["count"] == 2


def test_higher_priority_tasks_start_first_when_slots_are_scarce(store, tmp_path):
    run_id = execute(store, tmp_path, {"id": "w", "tasks": [
        {"id": "low", "tool": "shell", "command": "true"},
        {"id": "mid", "tool": "shell", "command": "true", "priority": 5},
        {"id": "high", "tool": "shell", "command": "true", "priority": 9}]}, concurrency=1)
    assert [a["step_name"] for a in store.get_attempts(run_id)] == ["w/high", "w/mid", "w/low"]


def test_group_commit_writes_a_burst_of_ops_in_few_transactions(store, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"id": "w", "tasks": [
        {"id": f"t{i}", "tool": "shell", "command": "true"} for i in range(60)]}))
    plan = load_plan(path)
    run_id = store.create_run(build_request(plan, concurrency=8).to_json(), plan.to_json(), at=utc_now_iso())
    runtime = Runtime(store, RuntimeOptions(state_dir=tmp_path / ".state", concurrency=8))
    runtime.start()
    try:
        runtime.submit(run_id)
        runtime.wait(run_id)
        stats = runtime.directory.get("ledger").ask(__import__("messages").Flush(), timeout=10)
    finally:
        runtime.stop()
    assert stats["ops"] > 60 * 5
    assert stats["commits"] < stats["ops"] / 4


class _Fragile(SupervisedActor):
    def on_receive(self, message):
        if message == "crash":
            raise RuntimeError("injected fault")
        return "alive"


def test_the_supervisor_restarts_a_crashed_child_under_the_same_name(tmp_path):
    directory = Directory()
    escalated = threading.Event()
    spec = SupervisorSpec(children=(ChildSpec("fragile", lambda: _Fragile.start("fragile", directory)),),
                          max_restarts=2, period_s=60)
    timers = TimerService()
    timers.start()
    supervisor = SupervisorActor.start(directory, spec, lambda reason: escalated.set(), timers)
    try:
        supervisor.ask(StartChildren(), timeout=5)
        directory.register("supervisor", supervisor)
        first = directory.get("fragile")
        first.tell("crash")
        assert _wait_for(lambda: _ref_changed(directory, first))
        assert directory.get("fragile").ask("ping", timeout=5) == "alive"
        for _ in range(2):
            current = directory.get("fragile")
            current.tell("crash")
            assert _wait_for(lambda: _ref_changed(directory, current) or escalated.is_set())
        assert escalated.wait(5), "a third crash within the period exceeds the intensity"
    finally:
        pykka.ActorRegistry.stop_all()
        timers.stop()


def _ref_changed(directory: Directory, old) -> bool:
    try:
        return directory.get("fragile") is not old
    except Exception:
        return False


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    event = threading.Event()
    deadline = __import__("time").monotonic() + timeout
    while __import__("time").monotonic() < deadline:
        if predicate():
            return True
        event.wait(0.01)
    return False
