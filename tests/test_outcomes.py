"""How an attempt ended, as a specification: the task state, the error class, what it says
about the tool (for the circuit breaker), and the words a person reads."""

from __future__ import annotations

import pytest

from domain.errors import ErrorClass
from domain.outcomes import (
    COMPLETED,
    Evidence,
    ProcessOutcome,
    ProcessResult,
    Verdict,
    breaker_evidence,
    check_verdict,
    describe_outcome,
    tool_verdict,
)
from domain.states import TaskState


def ended(outcome="exited", exit_code=None, signal=None, error="", duration_s=1.25, max_rss_bytes=0,
          plan_fault=False):
    return ProcessResult(pid=-1 if outcome == "spawn_error" else 42, create_time=1.0, exit_code=exit_code,
                         signal=signal, outcome=outcome, duration_s=duration_s, max_rss_bytes=max_rss_bytes,
                         cpu_s=0.0, error=error, plan_fault=plan_fault)


def test_an_outcome_given_as_text_compares_as_the_outcome_itself():
    assert ended("timeout").outcome is ProcessOutcome.TIMEOUT


@pytest.mark.parametrize(
    ("result", "succeeded"),
    [
        (ended(exit_code=0), True),
        (ended(exit_code=1), False),
        (ended(signal=9), False),
        # Killed by us, even if the tree reported 0 on its way down: not a success.
        (ended("timeout", exit_code=0), False),
        (ended("cancelled", exit_code=0), False),
    ],
)
def test_only_a_process_that_exited_on_its_own_with_zero_succeeded(result, succeeded):
    assert result.succeeded is succeeded


@pytest.mark.parametrize(
    ("result", "words"),
    [
        (ended("spawn_error", error="no such file"), "could not start: no such file"),
        (ended("timeout", duration_s=1.25), "timed out after 1.2s (process tree killed)"),
        (ended("resource_limit", max_rss_bytes=3 * 1024 * 1024 + 5),
         "memory limit exceeded (peak RSS 3 MiB; process tree killed)"),
        (ended("cancelled"), "cancelled (process tree killed)"),
        (ended(signal=11), "killed by signal 11"),
        (ended(exit_code=2), "exit code 2"),
    ],
)
def test_how_a_process_ended_is_said_in_a_few_words(result, words):
    assert describe_outcome(result) == words


def test_a_process_that_succeeded_leaves_the_verdict_to_the_acceptance_checks():
    assert tool_verdict(ended(exit_code=0), last_line="done") is None


@pytest.mark.parametrize(
    ("result", "cwd_exists", "state", "error_class", "message"),
    [
        (ended("timeout"), True, TaskState.TIMEOUT, ErrorClass.TIMEOUT, "timed out after 1.2s (process tree killed): boom"),
        (ended("resource_limit"), True, TaskState.FAILED, ErrorClass.RESOURCE_LIMIT,
         "memory limit exceeded (peak RSS 0 MiB; process tree killed): boom"),
        # What the tool printed last says nothing about a kill we asked for.
        (ended("cancelled"), True, TaskState.CANCELLED, ErrorClass.CANCELLED, "cancelled (process tree killed)"),
        (ended("spawn_error", error="ENOENT"), True, TaskState.FAILED, ErrorClass.TOOL_ERROR, "could not start: ENOENT"),
        (ended("spawn_error", error="ENOENT"), False, TaskState.FAILED, ErrorClass.BAD_INPUT, "could not start: ENOENT"),
        # Its interpreter is missing on the Ray node that was to run it: the plan's, not the cluster's.
        (ended("spawn_error", error="no python", plan_fault=True), True, TaskState.FAILED, ErrorClass.BAD_INPUT,
         "could not start: no python"),
        (ended(exit_code=1), True, TaskState.FAILED, ErrorClass.COMMAND_FAILED, "exit code 1: boom"),
        (ended(signal=9), True, TaskState.FAILED, ErrorClass.COMMAND_FAILED, "killed by signal 9: boom"),
    ],
)
def test_a_tool_that_did_not_succeed_gets_its_state_class_and_message(result, cwd_exists, state, error_class, message):
    assert tool_verdict(result, cwd_exists, last_line="boom") == Verdict(state, error_class, message)


def test_without_a_last_line_the_message_is_how_the_process_ended():
    assert tool_verdict(ended(exit_code=3)).message == "exit code 3"


def test_a_missing_working_directory_is_assumed_present_unless_said():
    assert tool_verdict(ended("spawn_error", error="x")).error_class is ErrorClass.TOOL_ERROR


def test_a_passing_check_leaves_the_next_check_to_run():
    assert check_verdict("tests", True, ended(exit_code=1), "ignored") is None


@pytest.mark.parametrize(
    ("result", "verdict"),
    [
        (ended("cancelled"), Verdict(TaskState.CANCELLED, ErrorClass.CANCELLED, "cancelled (process tree killed)")),
        (ended("spawn_error", error="ENOENT"),
         Verdict(TaskState.FAILED, ErrorClass.BAD_INPUT, "acceptance check 'tests' could not start: ENOENT")),
        (ended(exit_code=1), Verdict(TaskState.FAILED, ErrorClass.GATE, "acceptance check 'tests' failed: 2 failed")),
        # A check that timed out or was killed is the task's failure to pass its gate.
        (ended("timeout"), Verdict(TaskState.FAILED, ErrorClass.GATE, "acceptance check 'tests' failed: 2 failed")),
        (ended("resource_limit"), Verdict(TaskState.FAILED, ErrorClass.GATE, "acceptance check 'tests' failed: 2 failed")),
    ],
)
def test_a_failing_check_is_a_gate_failure_unless_cancelled_or_unable_to_start(result, verdict):
    assert check_verdict("tests", False, result, "2 failed") == verdict


EVIDENCE = [
    (None, Evidence.WORKED),
    # The tool is down.
    (ErrorClass.TOOL_ERROR, Evidence.BROKEN),
    (ErrorClass.CRASH, Evidence.BROKEN),
    (ErrorClass.TRANSIENT, Evidence.BROKEN),
    # Nothing either way: we stopped it, or it ran out of the task's time.
    (ErrorClass.CANCELLED, Evidence.NONE),
    (ErrorClass.INTERRUPTED, Evidence.NONE),
    (ErrorClass.TIMEOUT, Evidence.NONE),
    # The tool ran; the failure is the task's own.
    (ErrorClass.COMMAND_FAILED, Evidence.WORKED),
    (ErrorClass.GATE, Evidence.WORKED),
    (ErrorClass.BAD_INPUT, Evidence.WORKED),
    (ErrorClass.RESOURCE_LIMIT, Evidence.WORKED),
    (ErrorClass.REJECTED, Evidence.WORKED),
    (ErrorClass.MERGE, Evidence.WORKED),
]


@pytest.mark.parametrize(("error_class", "evidence"), EVIDENCE)
def test_what_an_attempts_end_says_about_its_tool(error_class, evidence):
    assert breaker_evidence(error_class) is evidence
    assert Verdict(TaskState.FAILED, error_class, "").evidence is evidence


def test_every_error_class_has_a_stated_breaker_meaning():
    assert {c for c, _ in EVIDENCE} - {None} == set(ErrorClass)


def test_a_completed_attempt_has_no_error_and_says_the_tool_worked():
    assert (COMPLETED.state, COMPLETED.error_class, COMPLETED.message) == (TaskState.COMPLETED, None, "")
    assert COMPLETED.evidence is Evidence.WORKED


@pytest.mark.parametrize("result", [ended(exit_code=1), ended("spawn_error", error="ENOENT"), ended(signal=9)])
def test_a_tool_whose_output_filesystem_is_full_failed_for_lack_of_space_a_resource_limit(result):
    verdict = tool_verdict(result, last_line="boom", full_disk="/var/logs")
    assert verdict == Verdict(TaskState.FAILED, ErrorClass.RESOURCE_LIMIT,
                              f"{describe_outcome(result)}: its output could not be written: no space left on /var/logs")


def test_a_full_disk_does_not_hide_a_timeout_or_a_cancellation():
    assert tool_verdict(ended("timeout"), full_disk="/x").state is TaskState.TIMEOUT
    assert tool_verdict(ended("cancelled"), full_disk="/x").state is TaskState.CANCELLED
