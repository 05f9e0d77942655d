"""The run book's bookkeeping as behaviour: workstream states from task counts, blocking
through diamonds, the dispatch queue's order and limits, and how a finished run ends."""

from __future__ import annotations

from itertools import pairwise

import pytest

from domain.scheduling import (
    Dispatch,
    RunBook,
    derive_workstream_state,
    workstream_path,
)
from domain.states import (
    WORKSTREAM_TRANSITIONS,
    IllegalTransition,
    RunState,
    TaskState,
    WorkstreamState,
)

T = TaskState


def book(deps, priorities=None, states=None):
    return RunBook(deps=deps, priorities=priorities or {}, workstream_of={k: k.split("/")[0] for k in deps},
                   states=states)


def test_a_workstream_with_one_task_done_and_one_waiting_is_still_being_worked_on():
    b = book({"w/a": [], "w/b": []})
    for state in (T.QUEUED, T.IN_PROGRESS, T.COMPLETED):
        b.set_state("w/a", state)
    assert b.workstream_target("w") is WorkstreamState.EDITING
    b.set_state("w/b", T.QUEUED)
    assert b.workstream_target("w") is WorkstreamState.EDITING


def test_a_workstream_loaded_with_tasks_in_several_states_counts_each_of_them():
    b = book({"w/a": [], "w/b": [], "w/c": []}, states={"w/a": "COMPLETED", "w/b": "PENDING", "w/c": "PENDING"})
    b.set_state("w/b", T.QUEUED)
    assert b.workstream_target("w") is WorkstreamState.EDITING
    b.set_state("w/b", T.IN_PROGRESS)
    b.set_state("w/b", T.COMPLETED)
    b.set_state("w/c", T.QUEUED)
    b.set_state("w/c", T.IN_PROGRESS)
    b.set_state("w/c", T.COMPLETED)
    assert b.workstream_target("w") is WorkstreamState.DONE


def test_a_workstream_whose_tasks_all_left_pending_is_not_pending_any_more():
    b = book({"w/a": [], "w/b": []})
    b.set_state("w/a", T.QUEUED)
    b.set_state("w/b", T.QUEUED)
    assert b.workstream_target("w") is WorkstreamState.READY


def test_an_illegal_task_move_names_the_task():
    b = book({"w/a": []})
    with pytest.raises(IllegalTransition) as raised:
        b.set_state("w/a", T.COMPLETED)
    assert raised.value.key == "w/a"


def test_blocking_reaches_everything_downstream_once_even_through_a_diamond():
    b = book({"w/a": [], "w/b": ["w/a"], "w/c": ["w/a", "w/b"], "w/e": ["w/c"]})
    assert b.blocked_by("w/a") == ["w/b", "w/c", "w/e"]


def test_a_queued_task_without_a_priority_ranks_as_zero_and_ties_go_in_plan_order():
    b = book({"w/a": [], "w/b": [], "w/c": []}, priorities={"w/a": 0, "w/c": -1})
    for key in ("w/c", "w/b", "w/a"):
        b.set_state(key, T.QUEUED)
        b.enqueue(key, "sh")
    assert [d.task_key for d in b.take_dispatchable(3, {}, {})] == ["w/a", "w/b", "w/c"]


def test_an_adapter_limit_counts_what_runs_and_what_this_call_dispatches():
    b = book({f"w/{i}": [] for i in range(4)})
    for key in b.states:
        b.set_state(key, T.QUEUED)
        b.enqueue(key, "sh")
    # Nothing reported running for "sh": it has its whole limit free.
    assert b.take_dispatchable(4, {}, {"sh": 2}) == [Dispatch("w/0", "sh"), Dispatch("w/1", "sh")]
    assert b.take_dispatchable(4, {"sh": 1}, {"sh": 2}) == [Dispatch("w/2", "sh")]


def test_a_forgotten_task_is_no_longer_waiting_for_a_slot():
    b = book({"w/a": [], "w/b": []})
    for key, adapter in (("w/a", "x"), ("w/b", "y")):
        b.set_state(key, T.QUEUED)
        b.enqueue(key, adapter)
    assert b.queued_for("x") == ["w/a"] and b.queued_for("y") == ["w/b"]
    b.forget_queued("w/a")
    assert not b.is_enqueued("w/a") and b.is_enqueued("w/b")
    assert b.queued_adapters() == ["y"]
    assert b.take_dispatchable(2, {}, {}) == [Dispatch("w/b", "y")]


@pytest.mark.parametrize(
    ("states", "outcome"),
    [
        (["COMPLETED", "COMPLETED"], RunState.COMPLETED),
        (["COMPLETED", "CANCELLED"], RunState.CANCELLED),
        (["CANCELLED", "CANCELLED"], RunState.CANCELLED),
        (["COMPLETED", "FAILED"], RunState.PARTIAL),
        (["COMPLETED", "BLOCKED"], RunState.PARTIAL),
        (["CANCELLED", "TIMEOUT"], RunState.FAILED),
    ],
)
def test_a_finished_run_ends_by_what_its_tasks_ended(states, outcome):
    b = book({"w/a": [], "w/b": []}, states=dict(zip(("w/a", "w/b"), states)))
    assert b.is_finished()
    assert b.run_outcome() is outcome


def _distance(source, target):
    frontier, seen, steps = {source}, {source}, 0
    while target not in frontier:
        frontier = {n for s in frontier for n in WORKSTREAM_TRANSITIONS[s]} - seen
        if not frontier:
            return None
        seen |= frontier
        steps += 1
    return steps


@pytest.mark.parametrize("source", list(WorkstreamState))
def test_a_workstream_reaches_any_reachable_state_by_a_shortest_legal_path(source):
    for target in WorkstreamState:
        path = workstream_path(source, target)
        distance = _distance(source, target)
        if distance is None:
            assert path == []
            continue
        assert len(path) == distance, (source, target, path)
        assert path[-1:] == ([target] if distance else [])
        for a, b in pairwise([source, *path]):
            assert b in WORKSTREAM_TRANSITIONS[a], (source, target, path)


def test_between_equally_short_paths_a_workstream_takes_the_one_earlier_in_the_pipeline():
    # fixing -> done passes static_check or runtime_check; the pipeline order puts static first.
    assert workstream_path(WorkstreamState.FIXING, WorkstreamState.DONE) == [
        WorkstreamState.STATIC_CHECK, WorkstreamState.DONE]


@pytest.mark.parametrize(
    ("task_states", "workstream"),
    [
        # A blocked task never started: the workstream has not either.
        ([T.BLOCKED, T.PENDING], WorkstreamState.PENDING),
        ([T.BLOCKED, T.QUEUED], WorkstreamState.READY),
        # Every way of ending without success, other than being blocked, fails the workstream.
        ([T.COMPLETED, T.FAILED], WorkstreamState.FAILED),
        ([T.COMPLETED, T.TIMEOUT], WorkstreamState.FAILED),
        ([T.COMPLETED, T.CANCELLED], WorkstreamState.FAILED),
        ([T.COMPLETED, T.BLOCKED], WorkstreamState.BLOCKED),
    ],
)
def test_a_workstream_state_follows_from_its_tasks(task_states, workstream):
    assert derive_workstream_state(task_states) is workstream


def test_a_workstream_with_one_task_retried_and_another_still_failed_is_being_worked_on():
    b = book({"w/a": [], "w/b": []})
    for key in ("w/a", "w/b"):
        for state in (T.QUEUED, T.IN_PROGRESS, T.FAILED):
            b.set_state(key, state)
    b.set_state("w/a", T.PENDING)
    assert b.workstream_target("w") is WorkstreamState.EDITING


def test_an_adapter_limited_to_one_and_running_nothing_takes_exactly_one():
    b = book({"w/a": [], "w/b": []})
    for key in b.states:
        b.set_state(key, T.QUEUED)
        b.enqueue(key, "sh")
    assert b.take_dispatchable(2, {}, {"sh": 1}) == [Dispatch("w/a", "sh")]
