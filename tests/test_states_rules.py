"""The state machines move by move: every legal transition, and every other one refused.

The tables in ``domain.states`` are data; these tests say what each move is for, so dropping or
adding a move is a change of behaviour that fails here (not only in the document test).
"""

from __future__ import annotations

import itertools

import pytest

from domain.states import (
    ACTIVE_TASK_STATES,
    RUN_TRANSITIONS,
    SUCCESSFUL_TASK_STATES,
    TERMINAL_RUN_STATES,
    TERMINAL_TASK_STATES,
    UNSUCCESSFUL_TASK_STATES,
    IllegalTransition,
    RunState,
    TaskState,
    WorkstreamState,
    check_transition,
    is_allowed,
)

TASK_MOVES = {
    # Before it starts, a task is queued, or it cannot run (a dependency failed), or cancelled.
    "PENDING": {"QUEUED", "BLOCKED", "CANCELLED"},
    # Queued: an executor starts it (or a human is asked), it goes back (requeue on resume), it
    # is cancelled or blocked, or the attempt is lost before its tool started.
    # COMPLETED: an incremental run reused an earlier run's result.
    "QUEUED": {"IN_PROGRESS", "AWAITING_APPROVAL", "PENDING", "CANCELLED", "BLOCKED", "FAILED", "RETRY_WAIT",
               "COMPLETED"},
    # Running: its checks start, it waits for a human, it ends (any way), or it is requeued
    # because the runtime stopped under it.
    "IN_PROGRESS": {"VALIDATING", "AWAITING_APPROVAL", "COMPLETED", "FAILED", "TIMEOUT", "RETRY_WAIT",
                    "CANCELLED", "QUEUED"},
    "AWAITING_APPROVAL": {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "QUEUED"},
    "VALIDATING": {"COMPLETED", "FAILED", "TIMEOUT", "RETRY_WAIT", "CANCELLED", "QUEUED"},
    # Waiting for its backoff: queued again, cancelled, or blocked when the run stops.
    "RETRY_WAIT": {"QUEUED", "CANCELLED", "BLOCKED"},
    # Ended without success: a retry or a resume sends it back to PENDING (or straight to QUEUED).
    "FAILED": {"PENDING", "QUEUED"},
    "TIMEOUT": {"PENDING", "QUEUED"},
    "BLOCKED": {"PENDING", "QUEUED", "CANCELLED"},
    "CANCELLED": {"PENDING", "QUEUED"},
    # Completed is final.
    # Only `execute --plan` with a changed definition takes a completion back.
    "COMPLETED": {"PENDING"},
}

WORKSTREAM_MOVES = {
    "pending": {"ready", "blocked", "failed", "abandoned"},
    "ready": {"editing", "blocked", "failed", "abandoned"},
    # A workstream with no checks of a phase skips it.
    "editing": {"static_check", "runtime_check", "done", "blocked", "failed", "abandoned"},
    "static_check": {"editing", "fixing", "runtime_check", "done", "failed", "abandoned"},
    "fixing": {"editing", "static_check", "runtime_check", "failed", "abandoned"},
    "runtime_check": {"editing", "done", "fixing", "failed", "abandoned"},
    # Failed and blocked workstreams come back on a resume or a retry.
    "failed": {"ready", "pending", "abandoned"},
    "blocked": {"pending", "ready", "abandoned", "failed"},
    "done": set(),
    "abandoned": set(),
}

RUN_MOVES = {
    "pending": {"running", "abandoned", "cancelled"},
    "running": {"completed", "failed", "partial", "abandoned", "quarantined", "cancelled"},
    # An unsuccessful run may be resumed (running again) or given up.
    "failed": {"running", "abandoned"},
    "partial": {"running", "abandoned"},
    "quarantined": {"running", "abandoned"},
    "cancelled": {"running", "abandoned"},
    "completed": set(),
    "abandoned": set(),
}


def _every_pair(entity, enum, moves):
    for source, target in itertools.product([s.value for s in enum], repeat=2):
        if source != target:
            yield pytest.param(entity, source, target, target in moves[source], id=f"{entity}:{source}->{target}")


@pytest.mark.parametrize(
    ("entity", "source", "target", "legal"),
    [
        *_every_pair("task", TaskState, TASK_MOVES),
        *_every_pair("workstream", WorkstreamState, WORKSTREAM_MOVES),
        *_every_pair("run", RunState, RUN_MOVES),
    ],
)
def test_exactly_the_specified_moves_are_legal(entity, source, target, legal):
    assert is_allowed(entity, source, target) is legal


def test_cancelled_is_a_terminal_state_that_a_retry_can_leave():
    assert TaskState.CANCELLED in TERMINAL_TASK_STATES
    assert TaskState.CANCELLED in UNSUCCESSFUL_TASK_STATES
    assert is_allowed("task", "CANCELLED", "PENDING")


def test_a_task_ends_completed_or_unsuccessful_and_only_completed_is_success():
    assert TERMINAL_TASK_STATES == {"COMPLETED", "FAILED", "TIMEOUT", "BLOCKED", "CANCELLED"}
    assert SUCCESSFUL_TASK_STATES == {"COMPLETED"}
    assert UNSUCCESSFUL_TASK_STATES == {"FAILED", "TIMEOUT", "BLOCKED", "CANCELLED"}


def test_every_unsuccessful_end_can_be_retried_and_success_cannot():
    for state in UNSUCCESSFUL_TASK_STATES:
        assert is_allowed("task", state, "PENDING"), state
    # Back to PENDING only (a changed plan applied to the run): never straight to running or failed.
    assert not is_allowed("task", "COMPLETED", "QUEUED")
    assert not is_allowed("task", "COMPLETED", "FAILED")


def test_an_active_task_is_one_whose_tool_is_at_work():
    # A resume requeues exactly these: their attempt died with the runtime that ran it.
    assert ACTIVE_TASK_STATES == {"IN_PROGRESS", "VALIDATING", "AWAITING_APPROVAL"}


def test_a_run_ends_in_exactly_the_states_running_can_move_to():
    assert TERMINAL_RUN_STATES == RUN_TRANSITIONS[RunState.RUNNING]
    assert RunState.PENDING not in TERMINAL_RUN_STATES and RunState.RUNNING not in TERMINAL_RUN_STATES


def test_only_the_initial_state_can_be_created_for_every_kind():
    for entity, enum in (("task", TaskState), ("workstream", WorkstreamState), ("run", RunState)):
        initial = next(iter(enum)).value
        assert is_allowed(entity, None, initial)
        for state in list(enum)[1:]:
            assert not is_allowed(entity, None, state.value), (entity, state)


@pytest.mark.parametrize(
    ("from_state", "to_state"),
    [
        ("PENDING", "DANCING"),  # unknown target
        (None, "COMPLETED"),  # created in a state other than the initial one
        ("DANCING", "PENDING"),  # unknown source
        ("PENDING", "COMPLETED"),  # both known, move not in the table
    ],
)
def test_a_refused_move_says_which_entity_and_states_for_the_ledger_to_record(from_state, to_state):
    with pytest.raises(IllegalTransition) as raised:
        check_transition("task", from_state, to_state, key="ws/t")
    refusal = raised.value
    assert (refusal.entity, refusal.from_state, refusal.to_state, refusal.key) == ("task", from_state, to_state, "ws/t")
    assert str(refusal) == f"illegal task transition ws/t: {from_state} -> {to_state}"


def test_a_refusal_without_a_key_says_so_without_a_gap():
    with pytest.raises(IllegalTransition) as raised:
        check_transition("run", "completed", "running")
    assert raised.value.key == ""
    assert str(raised.value) == "illegal run transition: completed -> running"
