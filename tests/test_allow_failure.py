"""Soft failures (``allow_failure``) as a specification of the run core and the run book:
the task ends failed, its dependants run, the run is not failed by it."""

from __future__ import annotations

from domain.outcomes import COMPLETED
from domain.run_events import Noted, RetryDue, TaskMoved
from domain.scheduling import RunBook
from domain.states import FAILURE_ALLOWED, RunState, TaskState, WorkstreamState
from tests.test_run_core import CANCELLED, FAILED_EXIT, TIMED_OUT, Harness, plan, task


def test_an_allowed_failure_ends_failed_and_its_dependants_still_run():
    h = Harness()
    h.open(plan(task("ci", "lint", allow_failure=True), task("ci", "build", "ci/lint")))
    h.start_and_end("ci/lint", FAILED_EXIT)
    assert h.state("ci/lint") is TaskState.FAILED
    assert h.running() == ["ci/build"]
    h.start_and_end("ci/build", COMPLETED)
    assert h.finished().state is RunState.COMPLETED
    assert h.finished().reason == "1 completed, 1 failed (allowed)"


def test_an_allowed_failure_is_said_so_in_its_move_and_its_event():
    h = Harness()
    h.open(plan(task("ci", "lint", allow_failure=True)))
    h.start_and_end("ci/lint", FAILED_EXIT)
    move = [e for e in h.effects if isinstance(e, TaskMoved) and e.state is TaskState.FAILED][-1]
    assert move.reason == f"{FAILURE_ALLOWED} exit code 1"
    noted = next(e for e in h.effects if isinstance(e, Noted) and e.event_type == "TASK_FAILED")
    assert noted.payload["allowed"] is True and noted.payload["message"] == "exit code 1"


def test_a_timeout_is_a_failure_that_may_be_allowed_too():
    h = Harness()
    h.open(plan(task("ci", "slow", allow_failure=True), task("ci", "next", "ci/slow")))
    h.start_and_end("ci/slow", TIMED_OUT)
    assert h.state("ci/slow") is TaskState.TIMEOUT and h.running() == ["ci/next"]


def test_a_task_without_allow_failure_still_blocks_and_the_run_is_partial():
    h = Harness()
    h.open(plan(task("ci", "lint", allow_failure=True), task("ci", "tests"), task("ci", "build", "ci/tests", "ci/lint")))
    h.start_and_end("ci/lint", FAILED_EXIT)
    h.start_and_end("ci/tests", FAILED_EXIT)
    assert h.state("ci/build") is TaskState.BLOCKED
    assert h.finished().state is RunState.FAILED  # nothing completed: lint's allowance changes nothing


def test_a_dependant_waits_for_its_other_prerequisites_after_an_allowed_failure():
    h = Harness()
    h.open(plan(task("ci", "lint", allow_failure=True), task("ci", "tests"), task("ci", "build", "ci/tests", "ci/lint")))
    h.start_and_end("ci/lint", FAILED_EXIT)
    assert h.running() == ["ci/tests"]
    h.start_and_end("ci/tests", COMPLETED)
    assert h.running() == ["ci/build"]


def test_retries_come_first_and_only_the_last_failure_is_allowed():
    h = Harness()
    h.open(plan(task("ci", "flaky", max_attempts=2, backoff_s=0.1, allow_failure=True), task("ci", "after", "ci/flaky")))
    h.start_and_end("ci/flaky", FAILED_EXIT)
    assert h.state("ci/flaky") is TaskState.RETRY_WAIT and h.running() == []
    h.feed(RetryDue("r", "ci/flaky"))
    h.start_and_end("ci/flaky", FAILED_EXIT)
    assert h.state("ci/flaky") is TaskState.FAILED and h.running() == ["ci/after"]


def test_a_cancel_or_a_block_is_not_an_allowed_failure():
    h = Harness()
    h.open(plan(task("ci", "up"), task("ci", "lint", "ci/up", allow_failure=True), task("ci", "build", "ci/lint")))
    h.start_and_end("ci/up", FAILED_EXIT)
    assert h.state("ci/lint") is TaskState.BLOCKED and h.state("ci/build") is TaskState.BLOCKED

    h = Harness()
    h.open(plan(task("ci", "lint", allow_failure=True), task("ci", "build", "ci/lint")))
    h.start_and_end("ci/lint", CANCELLED)
    assert h.state("ci/build") is TaskState.BLOCKED
    assert h.finished().state is RunState.FAILED  # as without allow_failure: a cancel is no failure of its own


def test_the_workstream_of_an_allowed_failure_is_done_not_failed():
    book = RunBook({"ci/lint": (), "ci/build": ("ci/lint",)}, {}, {"ci/lint": "ci", "ci/build": "ci"},
                   allowed_failures=("ci/lint",))
    for state in (TaskState.QUEUED, TaskState.IN_PROGRESS, TaskState.FAILED):
        book.set_state("ci/lint", state)
    assert book.ready_dependants("ci/lint") == ["ci/build"]
    for state in (TaskState.QUEUED, TaskState.IN_PROGRESS, TaskState.COMPLETED):
        book.set_state("ci/build", state)
    assert book.workstream_target("ci") is WorkstreamState.DONE
    assert book.run_outcome() is RunState.COMPLETED
    assert book.failed_allowed("ci/lint") and not book.failed_allowed("ci/build")


def test_an_allowed_failure_run_again_makes_its_dependants_wait_again():
    book = RunBook({"ci/lint": (), "ci/build": ("ci/lint",)}, {}, {"ci/lint": "ci", "ci/build": "ci"},
                   states={"ci/lint": "FAILED"}, allowed_failures=("ci/lint",))
    assert book.ready_pending() == ["ci/build"]
    book.set_state("ci/lint", TaskState.PENDING)  # retried, or resumed
    assert book.ready_pending() == ["ci/lint"] and not book.is_ready("ci/build")


def test_a_resumed_run_counts_an_allowed_failure_as_settled_for_its_dependants():
    book = RunBook({"ci/lint": (), "ci/build": ("ci/lint",)}, {}, {"ci/lint": "ci", "ci/build": "ci"},
                   states={"ci/lint": "TIMEOUT"}, allowed_failures=("ci/lint",))
    assert book.is_ready("ci/build")
