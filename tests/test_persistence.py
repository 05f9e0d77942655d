"""The Store: the ledger's only writer. Each test reads as a rule the runtime relies on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from domain.plan import Plan
from domain.states import IllegalTransition
from messages.ledger import (
    AttemptFinished,
    AttemptStarted,
    ErrorObserved,
    EventObserved,
    RoutingDecided,
    TransitionRun,
    TransitionTask,
    TransitionWorkstream,
)
from persistence.db import make_engine
from persistence.errors import DuplicateAttempt, DuplicateRun, UnknownEntity
from persistence.migrate import SCHEMA_VERSION, init_db
from persistence.models import Event, Run, Task, Workstream
from persistence.store import Store

T0 = "2026-11-22T10:00:00.000000Z"


def at(second: int) -> str:
    return f"2026-11-22T10:00:{second:02d}.000000Z"


def plan(*workstreams: tuple[str, list[str]], depends: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A plan in ``Plan.to_json()`` form: workstream ids with their task ids."""
    return {
        "source": "plan.json",
        "base_dir": "/project",
        "hash": "h",
        "workstreams": [
            {
                "id": ws_id,
                "title": ws_id.upper(),
                "depends_on": (depends or {}).get(ws_id, []),
                "source_file": f"{ws_id}.json",
                "tasks": [{"workstream_id": ws_id, "id": t, "tool": "shell", "priority": 1} for t in tasks],
            }
            for ws_id, tasks in workstreams
        ],
    }


REQUEST = {"workstreams": ["build"], "tools": ["shell"]}
PLAN = plan(("build", ["compile", "test"]), ("docs", ["write"]), depends={"docs": ["build"]})


@pytest.fixture
def engine(tmp_path: Path, db_url: str | None) -> Iterator[Engine]:
    """The ledger every test here runs against, once on SQLite and once on PostgreSQL."""
    url = db_url or f"sqlite:///{tmp_path}/.state/orchestration.db"
    init_db(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / ".state" / "transitions.jsonl"


@pytest.fixture
def store(engine: Engine, log_path: Path) -> Iterator[Store]:
    with Store(engine, log_path) as store:
        yield store


@pytest.fixture
def run_id(store: Store) -> str:
    return store.create_run(REQUEST, PLAN, run_id="run-1", at=T0)


def rows(engine: Engine, model: type) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(model)).scalar_one()


def task(store: Store, run_id: str, key: str) -> dict[str, Any]:
    return next(t for t in store.get_tasks(run_id) if t["task_key"] == key)


def event_types(store: Store, run_id: str) -> list[str]:
    return [e["event_type"] for e in store.get_events(run_id)]


# -- creating runs ----------------------------------------------------------------------------


def test_create_run_writes_run_workstreams_tasks_and_events(store: Store) -> None:
    run_id = store.create_run(REQUEST, PLAN, at=T0)

    assert run_id.startswith("run-") and len(run_id) == len("run-") + 12
    run = store.get_run(run_id)
    assert run is not None
    assert (run["status"], run["created_at"], run["plan_source"]) == ("pending", T0, "plan.json")
    assert run["metadata"] == {"request": REQUEST, "plan": Plan.from_json(PLAN).to_json()}, "stored normalised"
    assert {(w["ws_id"], w["status"], tuple(w["depends_on"])) for w in store.get_workstreams(run_id)} == {
        ("build", "pending", ()),
        ("docs", "pending", ("build",)),
    }
    tasks = store.get_tasks(run_id)
    assert [(t["task_key"], t["state"], t["attempts"]) for t in tasks] == [
        ("build/compile", "PENDING", 0),
        ("build/test", "PENDING", 0),
        ("docs/write", "PENDING", 0),
    ]
    assert tasks[0]["spec"] == Plan.from_json(PLAN).workstreams[0].tasks[0].to_json()
    assert event_types(store, run_id) == ["RUN_CREATED", "EXECUTION_REQUEST_VALIDATED"]
    assert store.find_run_by_request_hash(run["request_hash"]) == run_id


def test_request_hash_finds_the_most_recent_run(store: Store) -> None:
    store.create_run(REQUEST, PLAN, run_id="run-old", at=at(1))
    store.create_run(REQUEST, PLAN, run_id="run-new", at=at(2))
    request_hash = store.get_run("run-new")["request_hash"]  # type: ignore[index]
    assert store.find_run_by_request_hash(request_hash) == "run-new"
    assert store.find_run_by_request_hash("no-such-hash") is None


def test_duplicate_run_id_is_refused_and_nothing_half_written(store: Store, engine: Engine, run_id: str) -> None:
    before = {model: rows(engine, model) for model in (Run, Workstream, Task, Event)}

    with pytest.raises(DuplicateRun, match="run-1"):
        store.create_run(REQUEST, plan(("other", ["x"])), run_id=run_id, at=at(5))

    assert {model: rows(engine, model) for model in before} == before


def test_failing_create_run_writes_nothing(store: Store, engine: Engine) -> None:
    broken = plan(("build", ["a"]), ("build", ["b"]))  # the same workstream twice
    with pytest.raises(IntegrityError):
        store.create_run(REQUEST, broken, run_id="run-broken", at=T0)
    assert store.get_run("run-broken") is None
    assert rows(engine, Event) == 0


# -- transitions ------------------------------------------------------------------------------


def test_legal_transitions_update_rows(store: Store, run_id: str) -> None:
    store.update_run_status(run_id, "running", reason="started by test")
    store.update_workstream_status(run_id, "build", "ready")
    store.update_workstream_status(run_id, "build", "editing")
    store.apply([
        TransitionTask(run_id, "build/compile", "QUEUED", at(1)),
        TransitionTask(run_id, "build/compile", "IN_PROGRESS", at(2), adapter="shell"),
        TransitionTask(run_id, "build/compile", "VALIDATING", at(3)),
        TransitionTask(run_id, "build/compile", "COMPLETED", at(4)),
    ])

    run = store.get_run(run_id)
    assert run is not None and (run["status"], run["status_reason"]) == ("running", "started by test")
    assert {w["ws_id"]: w["status"] for w in store.get_workstreams(run_id)}["build"] == "editing"
    done = task(store, run_id, "build/compile")
    assert (done["state"], done["adapter"], done["updated_at"]) == ("COMPLETED", "shell", at(4))
    assert (done["started_at"], done["finished_at"]) == (at(2), at(4))


def test_illegal_transition_raises_and_is_recorded(store: Store, run_id: str) -> None:
    with pytest.raises(IllegalTransition, match="PENDING -> COMPLETED"):
        store.update_task_state(run_id, "build/test", "COMPLETED")
    with pytest.raises(IllegalTransition):
        store.update_run_status(run_id, "completed")
    with pytest.raises(IllegalTransition):
        store.update_workstream_status(run_id, "docs", "done")

    assert task(store, run_id, "build/test")["state"] == "PENDING"
    illegal = store.get_events(run_id, types=["ILLEGAL_TRANSITION"])
    assert [e["payload"] for e in illegal] == [
        {"entity": "task", "key": "build/test", "from": "PENDING", "to": "COMPLETED"},
        {"entity": "run", "key": run_id, "from": "pending", "to": "completed"},
        {"entity": "workstream", "key": "docs", "from": "pending", "to": "done"},
    ]
    assert illegal[0]["task_key"] == "build/test" and illegal[0]["ws_id"] == "build"


def test_unknown_entities_are_refused(store: Store, run_id: str) -> None:
    with pytest.raises(UnknownEntity, match="nope"):
        store.update_task_state(run_id, "build/nope", "QUEUED")
    with pytest.raises(UnknownEntity, match="run-missing"):
        store.update_run_status("run-missing", "running")


def test_transition_to_current_state_is_a_harmless_no_op(store: Store, run_id: str) -> None:
    assert store.apply([TransitionTask(run_id, "build/test", "PENDING", at(1))]) == []
    assert event_types(store, run_id) == ["RUN_CREATED", "EXECUTION_REQUEST_VALIDATED"]


def test_batch_with_an_illegal_op_commits_the_others(store: Store, run_id: str) -> None:
    illegal = TransitionTask(run_id, "build/test", "COMPLETED", at(2))
    rejected = store.apply([
        TransitionTask(run_id, "build/compile", "QUEUED", at(1)),
        illegal,
        TransitionRun(run_id, "running", at(3)),
        TransitionWorkstream(run_id, "build", "ready", at(4)),
    ])

    assert [(r.op, type(r.error)) for r in rejected] == [(illegal, IllegalTransition)]
    assert task(store, run_id, "build/compile")["state"] == "QUEUED"
    assert store.get_run(run_id)["status"] == "running"  # type: ignore[index]
    assert event_types(store, run_id)[2:] == [
        "STATE_CHANGED", "ILLEGAL_TRANSITION", "STATE_CHANGED", "STATE_CHANGED",
    ]


def test_failed_batch_writes_nothing_and_leaves_the_cache_consistent(
    store: Store, run_id: str, log_path: Path
) -> None:
    queue = TransitionTask(run_id, "build/compile", "QUEUED", at(1))
    start = AttemptStarted(run_id, "build", "build/compile", 1, "shell", at(1))
    with pytest.raises(TypeError, match="not a ledger op"):
        store.apply([queue, start, object()])  # type: ignore[list-item]

    assert task(store, run_id, "build/compile")["state"] == "PENDING"
    assert store.get_attempts(run_id) == []
    assert log_path.read_text() == ""
    # Had the cache kept QUEUED or the attempt, these would be a no-op and a DuplicateAttempt.
    assert store.apply([queue, start]) == []
    assert task(store, run_id, "build/compile")["state"] == "QUEUED"
    assert len(store.get_attempts(run_id)) == 1


def test_a_new_store_continues_from_the_database(engine: Engine, run_id: str, store: Store) -> None:
    store.apply([TransitionTask(run_id, "build/compile", "QUEUED", at(1))])
    store.close()

    with Store(engine) as restarted:
        rejected = restarted.apply([
            TransitionTask(run_id, "build/compile", "PENDING", at(2)),
            TransitionTask(run_id, "build/compile", "COMPLETED", at(3)),
        ])
        assert [r.reason for r in rejected] == ["illegal task transition build/compile: PENDING -> COMPLETED"]


def test_transitions_log_mirrors_accepted_transitions(store: Store, run_id: str, log_path: Path) -> None:
    store.apply([
        TransitionRun(run_id, "running", at(1), reason="go"),
        TransitionTask(run_id, "build/compile", "QUEUED", at(2)),
        TransitionTask(run_id, "build/test", "COMPLETED", at(3)),  # illegal: not mirrored
    ])

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert lines == [
        {"at": at(1), "run_id": run_id, "entity": "run", "key": run_id,
         "from": "pending", "to": "running", "reason": "go"},
        {"at": at(2), "run_id": run_id, "entity": "task", "key": "build/compile",
         "from": "PENDING", "to": "QUEUED", "reason": ""},
    ]
    changed = store.get_events(run_id, types=["STATE_CHANGED"])
    assert [e["payload"] for e in changed] == [
        {k: v for k, v in line.items() if k not in ("at", "run_id")} for line in lines
    ]


# -- attempts, errors, events, routing --------------------------------------------------------


def test_attempts_are_recorded_and_counted_on_the_task(store: Store, run_id: str) -> None:
    key = "build/compile"
    rejected = store.apply([
        AttemptStarted(run_id, "build", key, 1, "shell", at(1), pid=42, pid_create_time=1.5, log_path="l1"),
        AttemptFinished(run_id, key, 1, "FAILED", at(2), exit_code=3, duration_s=1.0,
                        max_rss_bytes=2**40, error_class="transient", message="boom"),
        AttemptStarted(run_id, "build", key, 2, "shell", at(3)),
        AttemptStarted(run_id, "build", key, 2, "shell", at(4)),  # a replay
        AttemptFinished(run_id, key, 9, "FAILED", at(5)),  # never started
    ])

    assert [type(r.error) for r in rejected] == [DuplicateAttempt, UnknownEntity]
    attempts = store.get_attempts(run_id, key)
    assert [(a["attempt"], a["status"], a["exit_code"]) for a in attempts] == [
        (1, "FAILED", 3),
        (2, "IN_PROGRESS", None),
    ]
    assert (attempts[0]["pid"], attempts[0]["pid_create_time"], attempts[0]["max_rss_bytes"]) == (42, 1.5, 2**40)
    counted = task(store, run_id, key)
    assert (counted["attempts"], counted["exit_code"], counted["error_class"]) == (2, 3, "transient")


def test_single_op_attempt_api(store: Store, run_id: str) -> None:
    store.record_step_attempt(run_id, "docs", "docs/write", 1, adapter="shell")
    with pytest.raises(DuplicateAttempt):
        store.record_step_attempt(run_id, "docs", "docs/write", 1)
    store.finish_step_attempt(run_id, "docs/write", 1, "COMPLETED", exit_code=0)
    with pytest.raises(UnknownEntity):
        store.finish_step_attempt(run_id, "docs/write", 2, "COMPLETED")
    assert [a["status"] for a in store.get_attempts(run_id)] == ["COMPLETED"]


def test_record_error_counts_repeats_of_a_signature(store: Store, run_id: str) -> None:
    assert store.record_error(run_id, "build", "build/test", "GATE", "sig-a", "first") == 1
    assert store.record_error(run_id, "build", "build/test", "GATE", "sig-a", "second") == 2
    assert store.record_error(run_id, "build", "build/test", "GATE", "sig-b", "other") == 1

    errors = {e["signature"]: e for e in store.get_errors(run_id)}
    assert (errors["sig-a"]["count"], errors["sig-a"]["message"]) == (2, "second")
    assert errors["sig-a"]["first_seen_at"] < errors["sig-a"]["last_seen_at"]
    assert errors["sig-b"]["count"] == 1


def test_repeated_error_within_one_batch(store: Store, run_id: str) -> None:
    store.apply([ErrorObserved(run_id, "build", "build/test", "E", "sig", "m", at(s)) for s in (1, 2, 3)])
    [error] = store.get_errors(run_id)
    assert (error["count"], error["first_seen_at"], error["last_seen_at"]) == (3, at(1), at(3))


def test_events_are_inserted_and_read_with_a_cursor(store: Store, run_id: str) -> None:
    store.record_event(run_id, "build", "TASK_STARTED", {"task": "build/compile"}, task_key="build/compile")
    store.apply([EventObserved("TASK_COMPLETED", at(1), run_id, "build", "build/compile", '{"ok": true}')])

    events = store.get_events(run_id)
    assert events[-2]["payload"] == {"task": "build/compile"}
    assert events[-2]["task_key"] == "build/compile"
    assert [e["event_type"] for e in store.get_events(run_id, after_id=events[-2]["id"])] == ["TASK_COMPLETED"]
    assert [e["event_type"] for e in store.get_events(run_id, types=["TASK_STARTED"])] == ["TASK_STARTED"]


def test_routing_decisions_are_recorded(store: Store, run_id: str) -> None:
    store.apply([RoutingDecided(run_id, "build/compile", ("aider", "shell"), "shell", "aider circuit open", at(1))])
    [decision] = store.get_routing_decisions(run_id)
    assert (decision["candidates"], decision["chosen"], decision["decided_at"]) == (["aider", "shell"], "shell", at(1))


# -- reads and scale --------------------------------------------------------------------------


def test_list_runs_and_inspect_summary(store: Store) -> None:
    store.create_run(REQUEST, PLAN, run_id="run-a", at=at(1))
    store.create_run(REQUEST, PLAN, run_id="run-b", at=at(2))
    store.update_task_state("run-b", "docs/write", "QUEUED")

    runs = store.list_runs()
    assert [r["run_id"] for r in runs] == ["run-b", "run-a"]
    assert runs[0]["task_counts"] == {"PENDING": 2, "QUEUED": 1}
    assert "metadata" not in runs[0]
    summary = store.inspect_summary()
    assert summary["runs"] == {"pending": 2}
    assert summary["workstreams"] == {"pending": 4}
    assert summary["tasks"] == {"PENDING": 5, "QUEUED": 1}
    assert (summary["schema_version"], summary["events"]) == (SCHEMA_VERSION, 5)
    assert summary["db_url"] == store.engine.url.render_as_string(hide_password=True)


def test_group_commit_of_ten_thousand_ops(store: Store, engine: Engine) -> None:
    task_ids = [f"t{i}" for i in range(2000)]
    run_id = store.create_run(REQUEST, plan(("w", task_ids)), at=T0)
    ops: list[Any] = []
    for task_id in task_ids:
        key = f"w/{task_id}"
        ops += [
            TransitionTask(run_id, key, "QUEUED", at(1)),
            TransitionTask(run_id, key, "IN_PROGRESS", at(2)),
            AttemptStarted(run_id, "w", key, 1, "shell", at(2)),
            AttemptFinished(run_id, key, 1, "COMPLETED", at(3), exit_code=0),
            TransitionTask(run_id, key, "COMPLETED", at(3)),
        ]
    assert len(ops) == 10_000

    for start in range(0, len(ops), 500):
        assert store.apply(ops[start:start + 500]) == []

    assert store.list_runs()[0]["task_counts"] == {"COMPLETED": 2000}
    assert rows(engine, Event) == 2 + 3 * 2000
