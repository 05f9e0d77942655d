"""The run core as a specification: events in, effects out, no threads, no clock, no I/O."""

from __future__ import annotations

import pytest

from domain.breaker import BreakerPolicy, CircuitState
from domain.errors import ErrorClass
from domain.outcomes import COMPLETED, Verdict
from domain.plan import Plan, TaskSpec, Workstream, with_integration_steps
from domain.routing import AdapterInfo
from domain.run_core import ControlRefused, CoreConfig, RunCore, RunNotActive
from domain.run_events import (
    Announced,
    AttemptBegan,
    AttemptClosed,
    AttemptEnded,
    BreakerDue,
    CancelRequested,
    CaptureWanted,
    ChangesRecorded,
    Dispatched,
    DispatchRefused,
    ErrorCounted,
    ExecutorDown,
    ExecutorUp,
    IntegrationEnded,
    IntegrationWanted,
    LedgerHold,
    Noted,
    Phase,
    PhaseBegan,
    ProcessKill,
    ReportAccepted,
    RetryDue,
    Route,
    Routed,
    RouteRequested,
    RunMoved,
    RunOpened,
    TaskMoved,
    Tick,
    TimerSet,
    WorkstreamMoved,
    WorktreeReady,
    WorktreeWanted,
)
from domain.states import RunState, TaskState, WorkstreamState

FAILED_EXIT = Verdict(TaskState.FAILED, ErrorClass.COMMAND_FAILED, "exit code 1")
GATE_FAILED = Verdict(TaskState.FAILED, ErrorClass.GATE, "acceptance check 'x' failed: exit code 1")
TOOL_DOWN = Verdict(TaskState.FAILED, ErrorClass.TOOL_ERROR, "could not start: no such file")
TIMED_OUT = Verdict(TaskState.TIMEOUT, ErrorClass.TIMEOUT, "timed out after 1.0s")
CANCELLED = Verdict(TaskState.CANCELLED, ErrorClass.CANCELLED, "cancelled")


def task(ws: str, id: str, *deps: str, tool: str = "shell", **fields) -> TaskSpec:
    return TaskSpec(workstream_id=ws, id=id, tool=tool, command="true", depends_on=deps, **fields)


def plan(*tasks: TaskSpec, isolated: tuple[str, ...] = (), after: dict[str, tuple[str, ...]] | None = None) -> Plan:
    """A plan of ``tasks``; workstreams in ``isolated`` work in a worktree of ``/repo``, and
    ``after`` maps a workstream to the workstreams it depends on."""
    workstreams: dict[str, list[TaskSpec]] = {}
    for t in tasks:
        workstreams.setdefault(t.workstream_id, []).append(t)
    built = Plan(tuple(
        Workstream(ws, tasks=tuple(ts), repo="/repo" if ws in isolated else None,
                   isolation="worktree" if ws in isolated else "none", depends_on=(after or {}).get(ws, ()))
        for ws, ts in workstreams.items()), "plan", "/base")
    return with_integration_steps(built)


class Harness:
    """Drives a core the way the Scheduler does, answering routes and remembering effects."""

    def __init__(self, concurrency: int = 4, breaker: BreakerPolicy = BreakerPolicy(), **config) -> None:
        self.core = RunCore(CoreConfig(concurrency, (AdapterInfo("shell", "shell", breaker=breaker),),
                                       **config))
        self.now = 0.0
        self.effects: list = []

    def feed(self, event) -> list:
        out = self.core.handle(event, self.now, "2026-01-01T00:00:00Z")
        self.effects += out
        routes = [e for e in out if isinstance(e, RouteRequested)]
        for request in routes:  # the router sends everything to the shell adapter
            out += self.feed(Routed(request.run_id, tuple(Route(t.key, "shell", "rule") for t in request.tasks)))
        return out

    def open(self, the_plan: Plan, **fields) -> list:
        return self.feed(RunOpened("r", the_plan, "/logs", **fields))

    def dispatched(self) -> list[Dispatched]:
        return [e for e in self.effects if isinstance(e, Dispatched)]

    def running(self) -> list[str]:
        return sorted(self.core.runs["r"].running) if "r" in self.core.runs else []

    def start_and_end(self, key: str, verdict: Verdict) -> list:
        attempt = self.core.runs["r"].running[key].attempt
        self.feed(AttemptBegan("r", key, attempt, pid=100, create_time=1.0))
        return self.feed(AttemptEnded("r", key, attempt, verdict, 0.1))

    def state(self, key: str) -> TaskState:
        """The task's state as recorded (the run may have left the core)."""
        moves = [e.state for e in self.effects if isinstance(e, TaskMoved) and e.task_key == key]
        return moves[-1] if moves else self.core.runs["r"].book.states[key]

    def finished(self) -> RunMoved | None:
        return next((e for e in self.effects if isinstance(e, RunMoved) and e.finished), None)


# -- readiness and dispatch -----------------------------------------------------------------------
def test_only_tasks_whose_dependencies_completed_are_dispatched_and_dependants_follow():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2", "a/1"), task("b", "1")))
    assert h.running() == ["a/1", "b/1"]
    assert h.state("a/2") is TaskState.PENDING
    h.start_and_end("a/1", COMPLETED)
    assert h.running() == ["a/2", "b/1"]


def test_no_more_than_the_concurrency_runs_at_once_and_priority_goes_first():
    h = Harness(concurrency=2)
    h.open(plan(task("a", "low"), task("a", "mid", priority=1), task("a", "high", priority=5)))
    assert h.running() == ["a/high", "a/mid"]
    h.start_and_end("a/high", COMPLETED)
    assert h.running() == ["a/low", "a/mid"]


def test_an_attempt_is_dispatched_with_its_log_path_and_a_second_attempt_gets_its_own():
    h = Harness()
    h.open(plan(task("a", "x", max_attempts=2, backoff_s=0.5)))
    h.start_and_end("a/x", FAILED_EXIT)
    h.feed(RetryDue("r", "a/x"))
    logs = [d.log_path for d in h.dispatched()]
    assert logs == ["/logs/a/x.log", "/logs/a/x.attempt2.log"]


def test_a_run_completes_only_when_every_task_completed():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2", "a/1")))
    h.start_and_end("a/1", COMPLETED)
    assert h.finished() is None
    h.start_and_end("a/2", COMPLETED)
    assert h.finished().state is RunState.COMPLETED
    assert "r" not in h.core.runs


def test_reports_of_another_attempt_are_ignored_and_not_recorded():
    h = Harness()
    h.open(plan(task("a", "x")))
    stale = h.feed(AttemptEnded("r", "a/x", 7, COMPLETED))
    assert stale == [] and h.state("a/x") is TaskState.QUEUED


def test_a_current_report_is_passed_to_the_ledger_untouched():
    h = Harness()
    h.open(plan(task("a", "x")))
    record = object()
    out = h.feed(AttemptBegan("r", "a/x", 1, 5, 1.0, report=record))
    assert ReportAccepted(record) in out


# -- failures, blocking, retries ------------------------------------------------------------------
def test_a_failure_blocks_everything_downstream_and_other_branches_finish():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2", "a/1"), task("b", "3", "a/2"), task("c", "x")))
    h.start_and_end("a/1", FAILED_EXIT)
    assert h.state("a/2") is TaskState.BLOCKED and h.state("b/3") is TaskState.BLOCKED
    h.start_and_end("c/x", COMPLETED)
    assert h.finished().state is RunState.PARTIAL


def test_a_run_where_nothing_completed_fails():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2", "a/1")))
    h.start_and_end("a/1", FAILED_EXIT)
    assert h.finished().state is RunState.FAILED


def test_a_failed_attempt_with_attempts_left_waits_its_backoff_then_is_queued_again():
    h = Harness()
    h.open(plan(task("a", "x", max_attempts=3, backoff_s=0.4)))
    out = h.start_and_end("a/x", FAILED_EXIT)
    timer = next(e for e in out if isinstance(e, TimerSet))
    assert timer.event == RetryDue("r", "a/x") and 0.4 <= timer.delay_s <= 0.44
    assert h.state("a/x") is TaskState.RETRY_WAIT
    h.feed(RetryDue("r", "a/x"))
    assert h.running() == ["a/x"]
    out = h.start_and_end("a/x", FAILED_EXIT)
    assert 0.8 <= next(e for e in out if isinstance(e, TimerSet)).delay_s <= 0.88
    h.feed(RetryDue("r", "a/x"))
    h.start_and_end("a/x", FAILED_EXIT)
    assert h.state("a/x") is TaskState.FAILED  # three failures: the budget is spent


@pytest.mark.parametrize("error_class", [ErrorClass.BAD_INPUT, ErrorClass.REJECTED, ErrorClass.MERGE])
def test_failures_that_cannot_change_are_never_retried(error_class):
    h = Harness()
    h.open(plan(task("a", "x", max_attempts=5)))
    h.start_and_end("a/x", Verdict(TaskState.FAILED, error_class, "no"))
    assert h.state("a/x") is TaskState.FAILED


def test_a_timeout_is_retried_like_any_failure_and_ends_timeout():
    h = Harness()
    h.open(plan(task("a", "x", max_attempts=2)))
    h.start_and_end("a/x", TIMED_OUT)
    assert h.state("a/x") is TaskState.RETRY_WAIT
    h.feed(RetryDue("r", "a/x"))
    h.start_and_end("a/x", TIMED_OUT)
    assert h.state("a/x") is TaskState.TIMEOUT


def test_every_failure_is_counted_with_its_signature():
    h = Harness()
    h.open(plan(task("a", "x")))
    h.start_and_end("a/x", FAILED_EXIT)
    counted = [e for e in h.effects if isinstance(e, ErrorCounted)]
    assert [(c.task_key, c.error_class) for c in counted] == [("a/x", ErrorClass.COMMAND_FAILED)]
    assert counted[0].signature.startswith("command_failed:")


def test_an_interrupted_attempt_is_queued_again_without_using_the_retry_budget():
    h = Harness()
    h.open(plan(task("a", "x")))
    h.start_and_end("a/x", Verdict(TaskState.FAILED, ErrorClass.INTERRUPTED, "interrupted"))
    assert h.running() == ["a/x"]
    assert h.core.runs["r"].failures["a/x"] == 0


def test_a_run_failing_with_one_signature_too_often_is_quarantined_and_waiting_work_blocked():
    h = Harness(quarantine_after=2)
    h.open(plan(*(task("a", str(i), max_attempts=9) for i in range(3)), task("b", "later", "a/0")))
    for key in ("a/0", "a/1", "a/2"):
        h.start_and_end(key, FAILED_EXIT)
    assert any(isinstance(e, Noted) and e.event_type == "RUN_QUARANTINED" for e in h.effects)
    assert h.finished().state is RunState.QUARANTINED
    assert "quarantined: 3 failures" in h.finished().reason


def test_resuming_puts_unsuccessful_tasks_back_and_keeps_completed_ones():
    h = Harness()
    the_plan = plan(task("a", "1"), task("a", "2", "a/1"), task("a", "3"))
    h.open(the_plan, task_states={"a/1": TaskState.COMPLETED, "a/2": TaskState.FAILED, "a/3": TaskState.IN_PROGRESS},
           attempts={"a/1": 1, "a/2": 1, "a/3": 1}, interrupted=(("a/3", 1),))
    assert h.running() == ["a/2", "a/3"]
    closed = [e for e in h.effects if isinstance(e, AttemptClosed)]
    assert [(c.task_key, c.verdict.error_class) for c in closed] == [("a/3", ErrorClass.INTERRUPTED)]
    assert [d.attempt for d in h.dispatched()] == [2, 2]


def test_a_reset_resumes_only_the_named_tasks_their_prerequisites_and_dependants():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2", "a/1"), task("b", "x")),
           task_states={"a/1": TaskState.FAILED, "a/2": TaskState.BLOCKED, "b/x": TaskState.FAILED},
           reset=("a/2",))
    assert h.running() == ["a/1"]
    assert h.state("b/x") is TaskState.FAILED


# -- circuit breakers ---------------------------------------------------------------------------
def test_user_command_failures_and_gate_failures_never_open_the_circuit():
    """The 7-task repro: five ordinary failures, then a gate failure, then more work."""
    h = Harness(breaker=BreakerPolicy(max_failures=2))
    h.open(plan(*(task("w", str(i)) for i in range(7))))
    for i in range(4):
        h.start_and_end(f"w/{i}", FAILED_EXIT)
    h.start_and_end("w/4", GATE_FAILED)
    h.start_and_end("w/5", FAILED_EXIT)
    h.start_and_end("w/6", COMPLETED)
    assert h.core.breakers["shell"].state is CircuitState.CLOSED
    assert not any(isinstance(e, Noted) and e.event_type.startswith("CIRCUIT") for e in h.effects)
    assert h.finished().state is RunState.PARTIAL


def tripped(h: Harness, tasks: int = 6) -> None:
    h.open(plan(*(task("w", str(i), max_attempts=3, backoff_s=0.0) for i in range(tasks))))
    for i in range(2):
        h.start_and_end(f"w/{i}", TOOL_DOWN)
    assert h.core.breakers["shell"].state is CircuitState.OPEN


def test_tool_failures_open_the_circuit_and_nothing_new_starts_until_the_probe():
    h = Harness(concurrency=1, breaker=BreakerPolicy(max_failures=2, reset_timeout_s=10))
    tripped(h)
    timer = next(e for e in h.effects if isinstance(e, TimerSet) and isinstance(e.event, BreakerDue))
    assert timer.delay_s == 10
    for key in ("w/0", "w/1"):
        h.feed(RetryDue("r", key))
    assert h.running() == []
    h.now = 10
    h.feed(BreakerDue("shell"))
    assert len(h.running()) == 1, "half-open admits exactly one probe"


@pytest.mark.parametrize("probe, closes", [
    (COMPLETED, True), (FAILED_EXIT, True), (GATE_FAILED, True),
    (TIMED_OUT, False), (CANCELLED, False), (TOOL_DOWN, False),
])
def test_every_probe_outcome_resolves_the_half_open_state(probe, closes):
    h = Harness(concurrency=2, breaker=BreakerPolicy(max_failures=2, reset_timeout_s=1))
    tripped(h)
    for started_before_it_opened in h.running():
        h.start_and_end(started_before_it_opened, TOOL_DOWN)
    h.now = 1
    h.feed(BreakerDue("shell"))
    (probe_key,) = h.running()
    h.start_and_end(probe_key, probe)
    breaker = h.core.breakers["shell"]
    if closes:
        assert breaker.state is CircuitState.CLOSED and len(h.running()) > 1
    elif probe is TOOL_DOWN:
        assert breaker.state is CircuitState.OPEN and h.running() == []
    else:
        assert breaker.state is CircuitState.HALF_OPEN
        assert len(h.running()) == 1 and h.running() != [probe_key], "the next probe starts"


def test_a_stall_on_an_open_circuit_is_announced_once_per_interval():
    h = Harness(concurrency=1, breaker=BreakerPolicy(max_failures=2, reset_timeout_s=30), waiting_every_s=5)
    tripped(h)
    for key in ("w/0", "w/1"):
        h.feed(RetryDue("r", key))
    said = []
    for second in range(1, 12):
        h.now = second
        said += [e for e in h.feed(Tick()) if isinstance(e, Announced) and e.label == "WAITING"]
    assert [s.detail for s in said] == ["waiting: circuit 'shell' open, next probe in 29s",
                                        "waiting: circuit 'shell' open, next probe in 24s",
                                        "waiting: circuit 'shell' open, next probe in 19s"]
    assert h.core.status("r")["runs"][0]["waiting"].startswith("waiting: circuit 'shell' open")


def test_a_run_whose_adapters_stay_open_enters_safe_mode_and_ends_partial_resumable():
    h = Harness(concurrency=1, breaker=BreakerPolicy(max_failures=2, reset_timeout_s=300), safe_mode_after_s=60)
    tripped(h)
    for key in ("w/0", "w/1"):
        h.feed(RetryDue("r", key))
    for second in (1, 30, 61, 62):
        h.now = second
        h.feed(Tick())
    finished = h.finished()
    assert finished.state is RunState.PARTIAL and "safe mode" in finished.reason
    blocked = [e for e in h.effects if isinstance(e, TaskMoved) and e.state is TaskState.BLOCKED]
    assert len(blocked) == 6 and all("safe mode" in b.reason for b in blocked)


def test_no_stall_is_said_while_something_runs_or_a_run_is_paused():
    h = Harness(concurrency=2, breaker=BreakerPolicy(max_failures=2, reset_timeout_s=30))
    tripped(h)
    h.core.pause("r", 0, "")
    h.now = 20
    assert not [e for e in h.feed(Tick()) if isinstance(e, Announced) and e.label == "WAITING"]


def test_a_crashed_executor_loses_its_attempts_as_crashes_and_kills_their_processes():
    h = Harness()
    h.open(plan(task("a", "x", max_attempts=2), task("a", "y")))
    h.feed(AttemptBegan("r", "a/x", 1, 123, 9.0))
    out = h.feed(ExecutorDown("shell", "boom"))
    assert ProcessKill(123, 9.0) in out
    closed = [e for e in out if isinstance(e, AttemptClosed)]
    assert {c.task_key for c in closed} == {"a/x", "a/y"}
    assert all(c.verdict.error_class is ErrorClass.CRASH for c in closed)
    assert h.running() == [], "nothing goes to a dead executor"
    h.feed(RetryDue("r", "a/x"))
    h.feed(ExecutorUp("shell"))
    assert h.running() == ["a/x"]


def test_a_refused_dispatch_leaves_the_task_queued_for_the_restarted_executor():
    h = Harness()
    h.open(plan(task("a", "x")))
    h.feed(DispatchRefused("r", "a/x", 1, "shell"))
    assert h.running() == [] and h.state("a/x") is TaskState.QUEUED
    h.feed(ExecutorUp("shell"))
    assert h.running() == ["a/x"] and h.dispatched()[-1].attempt == 1


def test_nothing_starts_while_the_ledger_cannot_commit():
    h = Harness()
    h.feed(LedgerHold(True))
    h.open(plan(task("a", "x")))
    assert h.running() == []
    h.feed(LedgerHold(False))
    assert h.running() == ["a/x"]


# -- control ---------------------------------------------------------------------------------------
def test_cancel_lists_only_what_it_cancelled_and_kills_what_runs():
    h = Harness(concurrency=1)
    h.open(plan(task("a", "1"), task("a", "2"), task("b", "done")))
    h.start_and_end("a/1", COMPLETED)
    result, effects = h.core.cancel("r", None, 0, "")
    running = h.running()
    assert set(result["cancelled"]) == {"a/2", "b/done"} - set(running)
    assert result["killing"] == running and "a/1" not in result["cancelled"] + result["killing"]
    assert [e for e in effects if isinstance(e, CancelRequested)][0].task_key == running[0]


def test_retry_of_a_completed_task_is_refused_and_of_an_unknown_run_says_not_active():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2")))
    h.start_and_end("a/1", COMPLETED)
    with pytest.raises(ControlRefused, match="is COMPLETED"):
        h.core.retry("r", "a/1", 0, "")
    with pytest.raises(RunNotActive):
        h.core.retry("other", "a/1", 0, "")


def test_retry_brings_back_a_failed_task_and_its_blocked_dependants():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2", "a/1"), task("a", "3")))
    h.start_and_end("a/1", FAILED_EXIT)
    result, _ = h.core.retry("r", "a/1", 0, "")
    assert result == {"retried": ["a/1", "a/2"]}
    h.effects.clear()
    h.feed(Routed("r", (Route("a/1", "shell", "rule"),)))
    assert "a/1" in h.running()


def test_an_approval_is_relayed_only_for_a_task_awaiting_one():
    h = Harness()
    h.open(plan(task("a", "ok", tool="human")))
    with pytest.raises(ControlRefused, match="not awaiting approval"):
        h.core.approve("r", "a/ok", True, "ann", "", 0, "")
    h.feed(AttemptBegan("r", "a/ok", 1))
    h.feed(PhaseBegan("r", "a/ok", 1, Phase.AWAITING, "ship it?"))
    assert h.state("a/ok") is TaskState.AWAITING_APPROVAL
    result, effects = h.core.approve("r", "a/ok", True, "ann", "fine", 0, "")
    assert result == {"task": "a/ok", "approved": True, "who": "ann"}


# -- worktree workstreams and their merge step ---------------------------------------------------
def isolated_run(h: Harness) -> None:
    h.open(plan(task("f", "edit"), task("f", "docs", "f/edit"), task("g", "after"), isolated=("f",),
                after={"g": ("f",)}))
    assert [e for e in h.effects if isinstance(e, WorktreeWanted)] == [WorktreeWanted("r", "f", "/repo")]
    h.feed(WorktreeReady("r", "f", "/wt/f"))


def finish_in_worktree(h: Harness, key: str) -> None:
    attempt = h.core.runs["r"].running[key].attempt
    h.feed(AttemptBegan("r", key, attempt))
    out = h.feed(AttemptEnded("r", key, attempt, COMPLETED, 0.1))
    assert CaptureWanted("r", "f", key, attempt, keep=True) in out
    h.feed(ChangesRecorded("r", key, attempt))


def test_a_worktree_task_runs_inside_the_worktree_and_its_changes_are_recorded_first():
    h = Harness()
    isolated_run(h)
    assert h.dispatched()[0].task.cwd == "/wt/f"
    finish_in_worktree(h, "f/edit")
    assert h.state("f/edit") is TaskState.COMPLETED


def test_the_merge_step_runs_after_the_workstream_and_a_conflict_fails_it_and_what_waits():
    h = Harness()
    isolated_run(h)
    finish_in_worktree(h, "f/edit")
    finish_in_worktree(h, "f/docs")
    assert IntegrationWanted("r", "f", None, "merge") in h.effects
    h.feed(IntegrationEnded("r", "f", merged=False, branch="b", target="main", conflicts=("x.py",)))
    assert h.state("f/@merge") is TaskState.FAILED
    assert h.state("g/after") is TaskState.BLOCKED, "a workstream after an unmerged one waits"
    assert h.finished().state is RunState.PARTIAL


def test_a_failed_merge_is_retried_by_request_in_a_new_worktree_and_the_run_completes():
    h = Harness()
    isolated_run(h)
    finish_in_worktree(h, "f/edit")
    finish_in_worktree(h, "f/docs")
    h.feed(IntegrationEnded("r", "f", merged=False, branch="b", target="main", error="local changes in the way"))
    assert h.finished().state is RunState.PARTIAL, "a run with an unmerged workstream is never completed"
    h2 = Harness()
    h2.open(plan(task("f", "edit"), task("f", "docs", "f/edit"), task("g", "after"), isolated=("f",),
                 after={"g": ("f",)}),
            task_states={"f/edit": TaskState.COMPLETED, "f/docs": TaskState.COMPLETED,
                         "f/@merge": TaskState.FAILED, "g/after": TaskState.BLOCKED})
    assert WorktreeWanted("r", "f", "/repo") in h2.effects
    h2.feed(WorktreeReady("r", "f", "/wt/f"))
    h2.feed(IntegrationEnded("r", "f", merged=True, branch="b", target="main", commit="abc"))
    assert h2.state("f/@merge") is TaskState.COMPLETED
    h2.start_and_end("g/after", COMPLETED)
    assert h2.finished().state is RunState.COMPLETED


def test_tasks_of_one_worktree_run_one_at_a_time():
    h = Harness()
    h.open(plan(task("f", "a"), task("f", "b"), isolated=("f",)))
    h.feed(WorktreeReady("r", "f", "/wt/f"))
    assert len(h.running()) == 1


def test_a_late_route_for_a_task_already_dispatched_starts_nothing_more():
    h = Harness()
    h.open(plan(task("a", "1")))
    assert len(h.dispatched()) == 1
    assert h.feed(Routed("r", (Route("a/1", "shell", "again"),))) == []
    assert len(h.dispatched()) == 1


def test_a_workstream_retrying_a_task_stays_at_work_and_never_shows_failed():
    h = Harness()
    h.open(plan(task("a", "x", max_attempts=2, backoff_s=0.0)))
    h.start_and_end("a/x", FAILED_EXIT)
    h.feed(RetryDue("r", "a/x"))
    h.start_and_end("a/x", COMPLETED)
    moves = [e.state.value for e in h.effects if isinstance(e, WorkstreamMoved)]
    assert "failed" not in moves and moves[-1] == "done"


def test_a_dispatch_refused_while_the_run_is_cancelled_cancels_the_task_and_the_run_ends():
    h = Harness()
    h.open(plan(task("a", "x")))
    h.core.cancel("r", None, 0, "")
    h.feed(DispatchRefused("r", "a/x", 1, "shell"))
    moved = [(e.state, e.reason, e.attempt) for e in h.effects if isinstance(e, TaskMoved) and e.task_key == "a/x"]
    assert moved[-1] == (TaskState.CANCELLED, "cancelled by request", 0)
    assert h.finished().state is RunState.CANCELLED
    assert not any(isinstance(e, ErrorCounted) for e in h.effects)
    assert h.core.adapter_running["shell"] == 0


def test_a_dispatch_refused_in_a_stopped_run_blocks_the_task_with_the_reason_and_the_run_ends():
    h = Harness(quarantine_after=0)
    h.open(plan(task("a", "bad"), task("b", "x")))
    h.start_and_end("a/bad", FAILED_EXIT)  # quarantined at once; b/x was already dispatched
    h.feed(DispatchRefused("r", "b/x", 1, "shell"))
    moved = [(e.state, e.reason) for e in h.effects if isinstance(e, TaskMoved) and e.task_key == "b/x"]
    assert moved[-1][0] is TaskState.BLOCKED and moved[-1][1].startswith("quarantined: 1 failures")
    assert h.finished().state is RunState.QUARANTINED


def test_a_resumed_run_refreshes_every_workstream_even_when_one_of_them_stays_at_work():
    h = Harness()
    h.open(plan(task("a", "x"), task("b", "y")), task_states={"a/x": TaskState.IN_PROGRESS},
           ws_states={"a": WorkstreamState.EDITING}, attempts={"a/x": 1}, interrupted=(("a/x", 1),))
    moves = [(e.ws_id, e.state) for e in h.effects if isinstance(e, WorkstreamMoved)]
    assert ("a", WorkstreamState.FAILED) not in moves, "a is at work: its task was only queued again"
    assert ("b", WorkstreamState.READY) in moves


def test_a_dispatch_refused_in_a_cancelled_run_is_recorded_as_a_cancellation():
    h = Harness()
    h.open(plan(task("a", "x")))
    h.core.cancel("r", None, 0, "")
    h.feed(DispatchRefused("r", "a/x", 1, "shell"))
    failed = [e.payload for e in h.effects if isinstance(e, Noted) and e.event_type == "TASK_FAILED"]
    assert failed[-1]["error_class"] == "cancelled"
