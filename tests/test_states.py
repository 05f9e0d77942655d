"""The run, workstream and task state machines, as specifications."""

import pytest

from domain.states import (
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    WORKSTREAM_TRANSITIONS,
    IllegalTransition,
    RunState,
    TaskState,
    WorkstreamState,
    check_transition,
    initial_state,
    is_allowed,
)


def test_every_state_has_a_row_in_its_table():
    assert set(RUN_TRANSITIONS) == set(RunState)
    assert set(WORKSTREAM_TRANSITIONS) == set(WorkstreamState)
    assert set(TASK_TRANSITIONS) == set(TaskState)


def test_new_entities_start_in_their_initial_state():
    assert initial_state("run") == "pending"
    assert initial_state("workstream") == "pending"
    assert initial_state("task") == "PENDING"
    check_transition("task", None, "PENDING")
    with pytest.raises(IllegalTransition):
        check_transition("task", None, "COMPLETED")


@pytest.mark.parametrize(
    "path",
    [
        ["PENDING", "QUEUED", "IN_PROGRESS", "VALIDATING", "COMPLETED"],
        ["PENDING", "QUEUED", "IN_PROGRESS", "COMPLETED"],
        ["PENDING", "QUEUED", "IN_PROGRESS", "TIMEOUT"],
        ["PENDING", "QUEUED", "IN_PROGRESS", "RETRY_WAIT", "QUEUED", "IN_PROGRESS", "FAILED", "PENDING"],
        ["PENDING", "BLOCKED", "PENDING"],
    ],
)
def test_task_lifecycles_that_are_allowed(path):
    for source, target in zip(path, path[1:]):
        check_transition("task", source, target)


@pytest.mark.parametrize(
    ("source", "target"),
    [("PENDING", "COMPLETED"), ("PENDING", "IN_PROGRESS"), ("COMPLETED", "QUEUED"), ("COMPLETED", "FAILED"), ("BLOCKED", "COMPLETED")],
)
def test_task_transitions_that_are_refused(source, target):
    with pytest.raises(IllegalTransition) as raised:
        check_transition("task", source, target, key="ws/t")
    assert raised.value.from_state == source and raised.value.to_state == target
    assert "ws/t" in str(raised.value)


def test_the_seed_workstream_chain_is_allowed():
    chain = ["pending", "ready", "editing", "static_check", "fixing", "static_check", "runtime_check", "done"]
    for source, target in zip(chain, chain[1:]):
        check_transition("workstream", source, target)


def test_any_active_workstream_may_fail_or_be_abandoned_but_done_is_final():
    for state in ("pending", "ready", "editing", "static_check", "fixing", "runtime_check"):
        assert is_allowed("workstream", state, "failed")
        assert is_allowed("workstream", state, "abandoned")
    assert not is_allowed("workstream", "done", "failed")
    assert not is_allowed("workstream", "editing", "pending")


def test_only_pending_or_ready_or_editing_workstreams_become_blocked():
    assert is_allowed("workstream", "pending", "blocked")
    assert is_allowed("workstream", "ready", "blocked")
    assert not is_allowed("workstream", "done", "blocked")


def test_runs_finish_once_and_only_unsuccessful_runs_resume():
    assert is_allowed("run", "pending", "running")
    for end in ("completed", "failed", "partial", "abandoned", "quarantined", "cancelled"):
        assert is_allowed("run", "running", end)
    assert is_allowed("run", "partial", "running")
    assert not is_allowed("run", "completed", "running")
    assert not is_allowed("run", "pending", "completed")


def test_unknown_state_names_are_illegal_not_crashes():
    assert not is_allowed("task", "PENDING", "DANCING")
    assert not is_allowed("run", "nonsense", "running")


def test_a_transition_to_the_same_state_is_a_harmless_replay():
    check_transition("task", "QUEUED", "QUEUED")


def test_the_state_machine_document_matches_the_tables():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "state_machine.md").read_text()
    for table in (RUN_TRANSITIONS, WORKSTREAM_TRANSITIONS, TASK_TRANSITIONS):
        for source, targets in table.items():
            ordered = sorted(targets, key=list(type(source)).index)
            cell = ", ".join(f"`{t.value}`" for t in ordered) or "— (final)"
            assert f"| `{source.value}` | {cell} |" in doc, source
