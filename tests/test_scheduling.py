"""Graph readiness, priorities, limits and blocking, decided without threads."""

from domain.scheduling import RunBook, derive_workstream_state, workstream_path
from domain.states import RunState, TaskState, WorkstreamState

T = TaskState


def book(deps, priorities=None, states=None):
    return RunBook(
        deps=deps,
        priorities=priorities or {},
        workstream_of={key: key.split("/")[0] for key in deps},
        states=states,
    )


def advance(b, key, *states):
    for state in states:
        b.set_state(key, state)


def test_tasks_without_dependencies_are_ready_first():
    b = book({"w/a": [], "w/b": ["w/a"], "w/c": []})
    assert b.ready_pending() == ["w/a", "w/c"]


def test_a_dependant_becomes_ready_only_when_all_prerequisites_completed():
    b = book({"w/a": [], "w/b": [], "w/c": ["w/a", "w/b"]})
    advance(b, "w/a", T.QUEUED, T.IN_PROGRESS, T.COMPLETED)
    assert b.ready_dependants("w/a") == []
    advance(b, "w/b", T.QUEUED, T.IN_PROGRESS, T.COMPLETED)
    assert b.ready_dependants("w/b") == ["w/c"]


def test_dependants_of_a_failure_are_blocked_transitively_never_skipped():
    b = book({"w/a": [], "w/b": ["w/a"], "w/c": ["w/b"], "x/d": []})
    advance(b, "w/a", T.QUEUED, T.IN_PROGRESS, T.FAILED)
    assert b.blocked_by("w/a") == ["w/b", "w/c"]


def test_higher_priority_is_dispatched_first_then_plan_order():
    b = book({"w/a": [], "w/b": [], "w/c": []}, priorities={"w/c": 5})
    for key in ("w/a", "w/b", "w/c"):
        b.set_state(key, T.QUEUED)
        b.enqueue(key, "shell")
    chosen = b.take_dispatchable(2, {}, {})
    assert [d.task_key for d in chosen] == ["w/c", "w/a"]


def test_a_full_adapter_does_not_hold_back_another_adapter():
    b = book({"w/a": [], "w/b": [], "w/c": []})
    for key, adapter in (("w/a", "python"), ("w/b", "python"), ("w/c", "shell")):
        b.set_state(key, T.QUEUED)
        b.enqueue(key, adapter)
    chosen = b.take_dispatchable(3, {"python": 1}, {"python": 1})
    assert [(d.task_key, d.adapter) for d in chosen] == [("w/c", "shell")]
    chosen = b.take_dispatchable(3, {"python": 0}, {"python": 1})
    assert [d.task_key for d in chosen] == ["w/a"]


def test_the_global_limit_caps_what_is_taken():
    b = book({f"w/{i}": [] for i in range(8)})
    for key in list(b.states):
        b.set_state(key, T.QUEUED)
        b.enqueue(key, "shell")
    assert len(b.take_dispatchable(4, {}, {})) == 4
    assert len(b.take_dispatchable(4, {}, {})) == 4
    assert b.take_dispatchable(4, {}, {}) == []


def test_run_outcome_is_completed_partial_or_failed():
    b = book({"w/a": [], "w/b": []})
    advance(b, "w/a", T.QUEUED, T.IN_PROGRESS, T.COMPLETED)
    advance(b, "w/b", T.QUEUED, T.IN_PROGRESS, T.COMPLETED)
    assert b.is_finished() and b.run_outcome() is RunState.COMPLETED
    b = book({"w/a": [], "w/b": ["w/a"], "w/c": []})
    advance(b, "w/a", T.QUEUED, T.IN_PROGRESS, T.FAILED)
    b.set_state("w/b", T.BLOCKED)
    assert not b.is_finished()
    advance(b, "w/c", T.QUEUED, T.IN_PROGRESS, T.COMPLETED)
    assert b.run_outcome() is RunState.PARTIAL
    b = book({"w/a": []})
    advance(b, "w/a", T.QUEUED, T.IN_PROGRESS, T.TIMEOUT)
    assert b.run_outcome() is RunState.FAILED


def test_resumed_states_keep_completed_prerequisites_counted():
    b = book({"w/a": [], "w/b": ["w/a"]}, states={"w/a": "COMPLETED"})
    assert b.ready_pending() == ["w/b"]


def test_workstream_state_follows_its_tasks():
    W = WorkstreamState
    assert derive_workstream_state([T.PENDING, T.PENDING]) is W.PENDING
    assert derive_workstream_state([T.QUEUED, T.PENDING]) is W.READY
    assert derive_workstream_state([T.IN_PROGRESS, T.PENDING]) is W.EDITING
    assert derive_workstream_state([T.COMPLETED, T.COMPLETED]) is W.DONE
    assert derive_workstream_state([T.FAILED, T.BLOCKED]) is W.FAILED
    assert derive_workstream_state([T.BLOCKED, T.BLOCKED]) is W.BLOCKED


def test_workstream_path_walks_legal_steps_only():
    W = WorkstreamState
    assert workstream_path(W.PENDING, W.DONE) == [W.READY, W.EDITING, W.DONE]
    assert workstream_path(W.EDITING, W.FAILED) == [W.FAILED]
    assert workstream_path(W.DONE, W.FAILED) == []
